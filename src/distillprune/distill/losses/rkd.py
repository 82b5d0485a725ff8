"""Relational knowledge distillation (Park, Kim, Lu & Cho, 2019, "Relational Knowledge Distillation", CVPR).

On embeddings t_i (teacher) and s_i (student) of a batch (a tapped feature flattened, e.g. the
penultimate pooled features, or the logits when no ``tap`` is given):

    distance:  psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,   mu = mean_{i != j} ||t_i - t_j||_2
               L_D = mean_{i, j} huber( psi_D(s_i, s_j) - psi_D(t_i, t_j) )
    angle:     psi_A(t_i, t_j, t_k) = < e_ij, e_kj >,    e_ij = (t_i - t_j) / ||t_i - t_j||_2
               L_A = mean_{i, j, k} huber( psi_A(s_i, s_j, s_k) - psi_A(t_i, t_j, t_k) )
    L = distance_weight * L_D + angle_weight * L_A          (paper: 25 and 50)

``huber`` is the smooth L1 loss (delta = 1), as in the authors' code. Only relations within the
batch are compared, so the student's and teacher's widths may differ (no adapter). Batches of
fewer than 2 samples carry no relation and give 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, embedding_pair, parse_tap


def _distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances normalised by their mean over i != j."""
    prod = e @ e.t()
    sq = prod.diagonal()
    # clamp before sqrt: the diagonal is 0 up to rounding, and sqrt has no gradient at 0
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * prod).clamp_min(1e-12).sqrt()
    n = len(e)
    d = d * (1 - torch.eye(n, device=e.device, dtype=e.dtype))
    mean = d.sum() / (n * (n - 1))
    return d / mean.clamp_min(1e-12)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every (i, j, k): a (B, B, B) tensor."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = e_i - e_j, normalised
    return torch.bmm(diff, diff.transpose(1, 2))


@LOSSES.register("rkd")
class RKDLoss(DistillLoss):
    width_free = True
    zero_when_equal = True
    schedulable = ("distance_weight", "angle_weight")

    def __init__(self, tap: str | list[str] | None = None, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(f"rkd weights must be >= 0, got distance {distance_weight}, angle {angle_weight}")
        self.taps = parse_tap(tap, "rkd")
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def _embeddings(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        return embedding_pair(self.taps, student, teacher)

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self._embeddings(student, teacher)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        es, et = self._embeddings(student, teacher.detach())
        if len(es) < 2:
            return es.sum() * 0.0
        loss = es.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(_distances(es), _distances(et))
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(_angles(es), _angles(et))
        return loss
