"""Probabilistic knowledge transfer (Passalis & Tefas, 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV).

The teacher's and the student's embeddings of a batch (a tapped feature flattened, or the logits
when no ``tap`` is given) each define conditional probabilities over the other samples from a
cosine-similarity kernel; the student matches the teacher's distribution:

    K(a, b)   = ( cos(a, b) + 1 ) / 2
    p_{j|i}   = K(t_i, t_j) / sum_k K(t_i, t_k)          (teacher; q_{j|i} likewise for the student)
    L         = mean_{i, j} p_{j|i} * log( (p_{j|i} + eps) / (q_{j|i} + eps) )

The mean over all B^2 pairs (not the per-row sum) and eps = 1e-7 follow the authors' code. Widths
may differ: only similarities within the batch are compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, embedding_pair, parse_tap

EPS = 1e-7


def similarity_distribution(e: torch.Tensor) -> torch.Tensor:
    """Row-normalised cosine kernel (B, B)."""
    e = F.normalize(e, p=2, dim=1)
    k = (e @ e.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@LOSSES.register("pkt")
class PKTLoss(DistillLoss):
    width_free = True
    zero_when_equal = True

    def __init__(self, tap: str | list[str] | None = None):
        super().__init__()
        self.taps = parse_tap(tap, "pkt")

    def _embeddings(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        return embedding_pair(self.taps, student, teacher)

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self._embeddings(student, teacher)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        es, et = self._embeddings(student, teacher.detach())
        q, p = similarity_distribution(es), similarity_distribution(et)
        return (p * torch.log((p + EPS) / (q + EPS))).mean()
