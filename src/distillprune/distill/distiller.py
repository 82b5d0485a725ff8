"""Training objectives: plain cross-entropy, or distillation from a frozen teacher.

An objective is called as ``objective(model, x, y) -> (loss, logits)``; ``attach`` installs the
feature taps (forward hooks) on the current student and builds adapters from a probe batch.
The teacher is frozen: eval mode, no gradients, forward under ``torch.no_grad``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.taps import FeatureTaps
from distillprune.distill.losses import LOSSES, DistillLoss, Outputs
from distillprune.errors import DataError


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def attach(self, model: nn.Module, probe: torch.Tensor) -> None:
        """Nothing to attach: cross-entropy reads only the logits."""

    def detach(self) -> None:
        """Nothing to remove."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        if y is None:
            raise DataError("training without labels needs a teacher (a distill stage with a teacher)")
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits


def freeze(teacher: nn.Module) -> nn.Module:
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """Weighted sum of registered distillation losses between a student and a frozen teacher."""

    def __init__(self, teacher: nn.Module, losses: list[tuple[float, DistillLoss]]):
        super().__init__()
        self.teacher = [freeze(teacher)]  # a list: keep the teacher out of this module's parameters
        self.weights = [w for w, _ in losses]
        self.losses = nn.ModuleList(loss for _, loss in losses)
        self._s_taps: FeatureTaps | None = None
        self._t_taps: FeatureTaps | None = None

    @classmethod
    def from_specs(cls, teacher: nn.Module, specs: list[dict]) -> Distiller:
        losses = []
        for spec in specs:
            spec = dict(spec)
            name, weight = spec.pop("name"), float(spec.pop("weight", 1.0))
            losses.append((weight, LOSSES.get(name)(**spec)))
        return cls(teacher, losses)

    def _paths(self) -> tuple[list[str], list[str]]:
        pairs = [p for loss in self.losses for p in loss.taps]
        return [s for s, _ in pairs], [t for _, t in pairs]

    def attach(self, model: nn.Module, probe: torch.Tensor) -> None:
        s_paths, t_paths = self._paths()
        self.detach()
        self._s_taps, self._t_taps = FeatureTaps(model, s_paths), FeatureTaps(self.teacher[0], t_paths)
        with torch.no_grad():
            s_out, t_out = self._outputs(model, probe)
        if s_out.logits.shape != t_out.logits.shape:
            raise DataError(f"student logits {tuple(s_out.logits.shape)} and teacher logits "
                            f"{tuple(t_out.logits.shape)} differ: different numbers of classes?")
        for loss in self.losses:
            loss.setup(s_out, t_out)

    def detach(self) -> None:
        for taps in (self._s_taps, self._t_taps):
            if taps is not None:
                taps.remove()
        self._s_taps = self._t_taps = None

    def _outputs(self, model: nn.Module, x: torch.Tensor) -> tuple[Outputs, Outputs]:
        assert self._s_taps is not None and self._t_taps is not None, "call attach() first"
        with torch.no_grad():
            self._t_taps.clear()
            t = Outputs(self.teacher[0](x), dict(self._t_taps.features))
        self._s_taps.clear()
        s = Outputs(model(x), dict(self._s_taps.features))
        return s, t

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        s, t = self._outputs(model, x)
        total = sum(w * loss(s, t, y) for w, loss in zip(self.weights, self.losses))
        return total, s.logits

    def trainable(self) -> Iterator[nn.Parameter]:
        return self.losses.parameters()

    def to_device(self, device: torch.device) -> Distiller:
        self.teacher[0].to(device)
        return self.to(device)


def snapshot(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the default teacher: the model before pruning)."""
    return freeze(copy.deepcopy(model))
