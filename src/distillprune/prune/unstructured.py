"""Unstructured magnitude pruning with masks and a gradual schedule.

Masks zero the smallest-magnitude weights of conv/linear layers, globally or per layer; they are
re-applied after every optimizer step and become permanent (plain zeros) at the end. The
gradual schedule is the cubic one of Zhu & Gupta (2017), "To prune, or not to prune":
``s_t = s_f * (1 - (1 - t/T)^3)``.
"""

from __future__ import annotations

import torch
from torch import nn

from distillprune.core.modules import LayerSelect


def prunable_weights(
    model: nn.Module, skip: list[nn.Module], layers: LayerSelect | None = None
) -> dict[str, torch.Tensor]:
    chosen = (layers or LayerSelect()).select(model, (nn.Conv2d, nn.Linear))
    return {
        f"{name}.weight": m.weight
        for name, m in chosen.items()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(m is s for s in skip)
    }


class MagnitudeMasks:
    def __init__(
        self,
        model: nn.Module,
        scope: str = "global",
        skip: list[nn.Module] | None = None,
        layers: LayerSelect | None = None,
    ):
        self.weights = prunable_weights(model, skip or [], layers)
        self.scope = scope
        self.masks: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, sparsity: float) -> None:
        """Recompute masks at ``sparsity`` (share of zeros) from the current magnitudes."""
        if sparsity <= 0:
            self.masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in self.weights.items()}
            return
        if self.scope == "global":
            allw = torch.cat([w.detach().abs().flatten() for w in self.weights.values()])
            k = int(sparsity * allw.numel())
            thr = allw.kthvalue(k).values if k > 0 else allw.new_tensor(-1.0)
            self.masks = {n: w.detach().abs() > thr for n, w in self.weights.items()}
        else:
            self.masks = {}
            for n, w in self.weights.items():
                k = int(sparsity * w.numel())
                thr = w.detach().abs().flatten().kthvalue(k).values if k > 0 else w.new_tensor(-1.0)
                self.masks[n] = w.detach().abs() > thr
        self.apply()

    @torch.no_grad()
    def apply(self, _model: nn.Module | None = None) -> None:
        for n, w in self.weights.items():
            if n in self.masks:
                w.mul_(self.masks[n].to(w.dtype))

    def sparsity(self) -> float:
        total = sum(w.numel() for w in self.weights.values())
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / max(total, 1)
