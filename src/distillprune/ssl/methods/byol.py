"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent"): no negatives. An online network (backbone ``f``,
projector ``g``, predictor ``q``) predicts a momentum *target* network's projection of the other view:

    p = normalize(q(g(f(v1)))),  z' = normalize(g'(f'(v2)))   (f', g': the target, no gradients)
    L = 2 - 2 p . z'   averaged over the batch, symmetrised (v1 <-> v2, the two terms summed)
    after each step: theta' <- m theta' + (1 - m) theta,  m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2

The target is an exponential moving average of the online backbone and projector, ``m`` rising from
``momentum`` (m0, 0.99: solo-learn's CIFAR setting; 0.996 in the paper's ImageNet runs) to 1 over the run.
It needs no large batch (no negatives) but more epochs than SimCLR to get going. Projector and predictor
(2-layer MLPs with BatchNorm, ``hidden`` -> ``out``) and the target live in the objective: none of them is
exported. The target is updated lazily, at the start of the next step (the same weights as after the step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.data.views import Views
from distillprune.ssl.base import SSL_METHODS, SSLMethod, head_input, mlp, views_of


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` averaged over the batch (the target ``z`` carries no gradient)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


@SSL_METHODS.register("byol")
class BYOL(SSLMethod):
    def __init__(self, momentum: float = 0.99, hidden: int = 512, out: int = 128):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"byol.momentum must be in [0, 1), got {momentum}")
        if hidden < 1 or out < 1:
            raise ValueError(f"byol: hidden and out must be >= 1, got {hidden}, {out}")
        self.momentum, self.hidden, self.out = float(momentum), int(hidden), int(out)
        self.projector: nn.Module | None = None
        self.predictor: nn.Module | None = None
        self.target: nn.Sequential | None = None  # (backbone copy, projector copy)
        self._online: list[nn.Module] = []  # the model being trained (not a submodule: it is not ours)
        self._step, self._steps = 0, 1

    def setup(self, model: nn.Module, probe: Batch, embedding: torch.Tensor) -> None:
        width = embedding.flatten(1).shape[1]
        device = embedding.device
        if head_input(self.projector) != width:
            self.projector = mlp([width, self.hidden, self.out]).to(device)
            self.predictor = mlp([self.out, self.hidden, self.out]).to(device)
        # the target starts as the online network (again after a prune step: the architecture changed)
        assert self.projector is not None
        self.target = nn.Sequential(copy.deepcopy(model), copy.deepcopy(self.projector)).to(device)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self._online = [model]

    def begin_epoch(self, steps: int, epoch: int, epochs: float) -> None:
        self._steps = max(1, round(steps * epochs))
        self._step = max(self._step, epoch * steps)

    def current_momentum(self) -> float:
        progress = min(self._step / self._steps, 1.0)
        return 1 - (1 - self.momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update_target(self) -> None:
        """theta' <- m theta' + (1 - m) theta for the backbone and the projector (buffers copied)."""
        assert self.target is not None and self.projector is not None
        m = self.current_momentum()
        online = nn.Sequential(self._online[0], self.projector)
        for pt, po in zip(self.target.parameters(), online.parameters(), strict=True):
            pt.mul_(m).add_(po.detach(), alpha=1 - m)
        for bt, bo in zip(self.target.buffers(), online.buffers(), strict=True):
            bt.copy_(bo)

    def forward(self, model: nn.Module, x: Views | Batch) -> tuple[torch.Tensor, torch.Tensor]:
        views = views_of(x, "byol")
        assert self.projector is not None and self.predictor is not None and self.target is not None
        if self.training and torch.is_grad_enabled():
            if self._step > 0:  # the last optimiser step's weights reach the target now
                self.update_target()
            self._step += 1
        both = views.both()
        h = call(model, both).flatten(1)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            backbone, projector = self.target[0], self.target[1]
            z1, z2 = projector(call(backbone, both).flatten(1)).chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1), h[: len(views)]

    def trainable(self) -> Iterator[nn.Parameter]:
        assert self.projector is not None and self.predictor is not None
        return iter([*self.projector.parameters(), *self.predictor.parameters()])
