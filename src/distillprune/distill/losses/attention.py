"""Attention transfer (Zagoruyko & Komodakis, 2017, "Paying More Attention to Attention", ICLR).

For a feature map A in R^{C x H x W} the spatial attention map is the channel-pooled p-th power,
flattened and L2-normalised:

    Q(A) = vec( mean_c |A_c|^p ) / || vec( mean_c |A_c|^p ) ||_2          (p = 2 in the paper)
    L    = beta / 2 * sum_k mean_{b, hw} ( Q(A_s^k) - Q(A_t^k) )^2

which is the authors' code (``at_loss``) with their beta = 1000 as the default. Channel counts may
differ (the map pools over channels, so no adapter is needed); when the spatial sizes differ, the
larger map is average-pooled to the smaller size before normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, parse_pairs, same_batch
from distillprune.errors import DistillpruneError


def attention_map(a: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): mean over channels of |a|^p."""
    return a.float().abs().pow(p).mean(dim=1, keepdim=True)


def _check(fs: torch.Tensor, ft: torch.Tensor, path: str) -> None:
    if fs.dim() != 4 or ft.dim() != 4:
        raise DistillpruneError(
            f"at needs (B, C, H, W) feature maps; '{path}' gives student {tuple(fs.shape)} "
            f"and teacher {tuple(ft.shape)}"
        )
    same_batch(fs, ft, f"feature '{path}'")


@LOSSES.register("at")
class AttentionLoss(DistillLoss):
    zero_when_equal = True
    schedulable = ("beta",)
    example = {"pairs": [["f", "f"]]}

    def __init__(self, pairs: list[list[str]] | list[str], p: float = 2.0, beta: float = 1000.0):
        super().__init__()
        if p <= 0:
            raise ValueError(f"at.p must be > 0, got {p}")
        if beta < 0:
            raise ValueError(f"at.beta must be >= 0, got {beta}")
        self.taps = parse_pairs(pairs, "at")
        self.p, self.beta = p, beta

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        for s, t in self.taps:
            _check(student.features[s], teacher.features[t], s)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        teacher = teacher.detach()
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.taps:
            fs, ft = student.features[s], teacher.features[t]
            _check(fs, ft, s)
            qs, qt = attention_map(fs, self.p), attention_map(ft, self.p)
            size = (min(qs.shape[2], qt.shape[2]), min(qs.shape[3], qt.shape[3]))
            qs = F.adaptive_avg_pool2d(qs, size) if qs.shape[-2:] != size else qs
            qt = F.adaptive_avg_pool2d(qt, size) if qt.shape[-2:] != size else qt
            qs, qt = F.normalize(qs.flatten(1), dim=1), F.normalize(qt.flatten(1), dim=1)
            total = total + (qs - qt).pow(2).mean()
        return self.beta / 2 * total
