"""Hidden-state distillation of transformers (TinyBERT: Jiao et al., 2020, "TinyBERT: Distilling BERT for
Natural Language Understanding").

    L = mean_k  sum_{i real} || W_k h_s^{k,i} - h_t^{m(k),i} ||^2 / (n_real * D_t)

over layer pairs (k, m(k)); ``W_k`` is a learned projection when the widths differ. ``layers: auto`` pairs
every layer of a Hugging Face student with the teacher layer it was pruned from, or uniformly when the
student was built smaller (m(k) = round((k+1) * N_t / N_s) - 1); ``pairs`` names module paths instead.
Padded tokens (the batch's attention mask) are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, parse_pairs, same_batch
from distillprune.distill.losses.sequence import encoder_pairs, projection, token_mask, tokens
from distillprune.errors import DistillpruneError


@LOSSES.register("hidden")
class HiddenStateLoss(DistillLoss):
    zero_when_equal = True
    width_free = True
    example = {"pairs": [["f", "f"]]}

    def __init__(self, pairs: list[list[str]] | list[str] | None = None, layers: str | None = None):
        super().__init__()
        if (pairs is None) == (layers is None):
            raise ValueError("hidden: give either pairs ([[student_module, teacher_module], ...]) or layers: auto")
        if layers is not None and layers != "auto":
            raise ValueError(f"hidden.layers: expected 'auto', got {layers!r}")
        self.auto = layers == "auto"
        self.taps = [] if self.auto else parse_pairs(pairs, "hidden")
        self.proj = nn.ModuleList()

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.auto:
            self.taps = encoder_pairs(student, teacher, "all")

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        if not self.taps:
            raise DistillpruneError("hidden: layers: auto was not bound to a student and a teacher")
        self.proj = nn.ModuleList(
            projection(
                tokens(student.features[s]).shape[-1], tokens(teacher.features[t]).shape[-1], student.logits.device
            )
            for s, t in self.taps
        )

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        teacher = teacher.detach()
        total = student.logits.new_zeros(()).float()
        for (s, t), proj in zip(self.taps, self.proj, strict=True):
            same_batch(student.features[s], teacher.features[t], f"feature '{s}'")
            hs, ht = proj(tokens(student.features[s])), tokens(teacher.features[t])
            if hs.shape != ht.shape:
                raise DistillpruneError(
                    f"hidden: student '{s}' {tuple(hs.shape)} and teacher '{t}' {tuple(ht.shape)} differ in tokens"
                )
            w = token_mask(student.mask, ht)
            err = ((hs - ht) ** 2).mean(-1)
            total = total + (err * w).sum() / w.sum().clamp_min(1.0)
        return total / len(self.taps)
