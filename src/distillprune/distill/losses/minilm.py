"""Self-attention relation distillation (MiniLM: Wang et al., 2020, "MiniLM: Deep Self-Attention
Distillation for Task-Agnostic Compression of Pre-Trained Transformers"; MiniLMv2, 2021: multi-head
query-query, key-key and value-value relations).

For each paired tensor X (queries, keys or values of one layer), split its width into R relation heads:

    A_r = softmax( X_r X_r^T / sqrt(d_r) )              (T x T, padded keys masked out)
    L = mean_{pairs, r, real tokens i} KL( A_r^t[i] || A_r^s[i] )

The relations are T x T whatever the widths, so a student with fewer heads or a narrower model learns from
the teacher without projections (R must divide both widths). ``layers: auto`` pairs the queries, keys and
values of the last layers of two Hugging Face encoders; ``pairs`` names module paths instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, parse_pairs, same_batch
from distillprune.distill.losses.sequence import encoder_pairs, token_mask, tokens
from distillprune.errors import DistillpruneError


def relations(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """(B, R, T, T) log attention relations of x (B, T, W); ``mask`` (B, T) marks real tokens."""
    b, t, w = x.shape
    if w % heads:
        raise DistillpruneError(f"minilm: {heads} relation heads do not divide a width of {w}; set heads")
    xr = x.view(b, t, heads, w // heads).transpose(1, 2)
    scores = xr @ xr.transpose(-1, -2) / (w // heads) ** 0.5
    scores = scores.masked_fill(mask[:, None, None, :] <= 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


@LOSSES.register("minilm")
class MiniLMLoss(DistillLoss):
    zero_when_equal = True
    width_free = True
    example = {"pairs": [["f", "f"]], "heads": 2}

    def __init__(self, pairs: list[list[str]] | list[str] | None = None, layers: str | None = None, heads: int = 8):
        super().__init__()
        if (pairs is None) == (layers is None):
            raise ValueError("minilm: give either pairs ([[student_module, teacher_module], ...]) or layers: auto")
        if layers is not None and layers != "auto":
            raise ValueError(f"minilm.layers: expected 'auto', got {layers!r}")
        if heads < 1:
            raise ValueError(f"minilm.heads must be >= 1, got {heads}")
        self.auto, self.heads = layers == "auto", int(heads)
        self.taps = [] if self.auto else parse_pairs(pairs, "minilm")

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        if not self.auto:
            return
        ((s, t),) = encoder_pairs(student, teacher, "last")
        parts_s = student.attention_parts(student.get_submodule(s))  # type: ignore[operator]
        parts_t = teacher.attention_parts(teacher.get_submodule(t))  # type: ignore[operator]
        self.taps = [(f"{s}.{a}", f"{t}.{b}") for a, b in zip(parts_s, parts_t, strict=True)]

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        if not self.taps:
            raise DistillpruneError("minilm: layers: auto was not bound to a student and a teacher")
        teacher = teacher.detach()
        total = student.logits.new_zeros(()).float()
        for s, t in self.taps:
            same_batch(student.features[s], teacher.features[t], f"feature '{s}'")
            xs, xt = tokens(student.features[s]), tokens(teacher.features[t])
            if xs.shape[1] != xt.shape[1]:
                raise DistillpruneError(f"minilm: student '{s}' and teacher '{t}' differ in tokens")
            m = token_mask(student.mask, xt)
            ls, lt = relations(xs, self.heads, m), relations(xt, self.heads, m)
            kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, R, T): KL per query token
            w = m[:, None, :].expand_as(kl)
            total = total + (kl * w).sum() / w.sum().clamp_min(1.0)
        return total / len(self.taps)
