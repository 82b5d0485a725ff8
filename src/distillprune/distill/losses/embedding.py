"""Embedding distillation for sentence encoders (Reimers & Gurevych, 2020, "Making Monolingual Sentence
Embeddings Multilingual using Knowledge Distillation": the student's sentence embedding regresses the
teacher's), with a cosine term for normalised embeddings:

    L = cosine * mean_i (1 - cos(P e_s^i, e_t^i)) + mse * mean_i || P e_s^i - e_t^i ||^2 / D

``P`` is a learned projection when the widths differ (hidden-size pruning), else the identity. The
embeddings are the model outputs (``tap`` reads a module instead). Label-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, embedding_pair, parse_tap
from distillprune.distill.losses.sequence import projection


@LOSSES.register("embedding")
class EmbeddingLoss(DistillLoss):
    zero_when_equal = True
    width_free = True

    def __init__(self, cosine: float = 1.0, mse: float = 0.0, tap: str | list[str] | None = None):
        super().__init__()
        if cosine < 0 or mse < 0 or cosine + mse <= 0:
            raise ValueError(f"embedding: cosine and mse weights must be >= 0 with a positive sum, got {cosine}, {mse}")
        self.cosine, self.mse = float(cosine), float(mse)
        self.taps = parse_tap(tap, "embedding")
        self.proj: nn.Module = nn.Identity()

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        es, et = embedding_pair(self.taps, student, teacher)
        self.proj = projection(es.shape[1], et.shape[1], es.device)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        es, et = embedding_pair(self.taps, student, teacher.detach())
        es = self.proj(es)
        loss = es.new_zeros(())
        if self.cosine:
            loss = loss + self.cosine * (1 - F.cosine_similarity(es, et, dim=1)).mean()
        if self.mse:
            loss = loss + self.mse * F.mse_loss(es, et)
        return loss
