"""The one signature every distillation loss has.

``loss(student: Outputs, teacher: Outputs, targets: Tensor | None) -> Tensor`` (a scalar).
``targets`` is None for label-free distillation. A loss that reads intermediate features
declares them in ``taps`` as (student_path, teacher_path) pairs; the Distiller installs the
hooks. Losses with trainable parts (adapters) build them in ``setup`` from probe outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from distillprune.core.registry import Registry


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillLoss(nn.Module):
    taps: list[tuple[str, str]] = []

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build trainable parts from one probe batch (shapes are known only then)."""

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError  # abstract: every registered loss overrides it


LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss")
