"""Online distillation: Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, 2018, CVPR).

Two networks train together, each distilling into the other; neither is pre-trained or frozen.
With the recipe's weighted losses sum_k w_k l_k(student, teacher, y):

    L = sum_k w_k l_k(student, sg(peer), y) + sum_k w_k l'_k(peer, sg(student), y)

where sg is stop-gradient and l'_k is a second instance of the same loss with its taps swapped
(its own adapters: they map the peer's features to the student's). Each network's gradient
comes from its own half only, so one optimiser step over both networks equals the paper's two
per-network steps taken on the same batch. The paper's loss (CE + KL(p_peer || p_self) at T = 1)
is ``losses: [{name: ce}, {name: kd, temperature: 1, alpha: 1}]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distillprune.core.batch import call
from distillprune.core.taps import FeatureTaps
from distillprune.distill.distiller import check_terms, probe_terms
from distillprune.distill.losses import Outputs
from distillprune.distill.losses.base import sequence_mask
from distillprune.distill.schedule import Clock, Term, build_term
from distillprune.errors import DataError, DistillpruneError


class MutualDistiller(nn.Module):
    """The student (the trainer's model) and ``peer`` (a submodule here, so it is optimised, saved in
    training checkpoints and resumed with them) learn from each other."""

    def __init__(self, peer: nn.Module, terms: list[Term], peer_terms: list[Term]):
        super().__init__()
        self.peer = peer
        for p in self.peer.parameters():
            p.requires_grad_(True)
        self.terms, self.peer_terms = terms, peer_terms
        for t in peer_terms:
            t.loss.taps = [(b, a) for a, b in t.loss.taps]
        self.losses = nn.ModuleList(t.loss for t in terms)
        self.peer_losses = nn.ModuleList(t.loss for t in peer_terms)
        self.clock = Clock()
        self._s_taps: FeatureTaps | None = None
        self._p_taps: FeatureTaps | None = None

    @classmethod
    def from_specs(cls, peer: nn.Module, specs: list[dict]) -> MutualDistiller:
        return cls(peer, [build_term(s) for s in specs], [build_term(s) for s in specs])

    def attach(self, model: nn.Module, probe: torch.Tensor) -> None:
        self.detach()
        pairs = [p for t in self.terms for p in t.loss.taps]
        self._s_taps = FeatureTaps(model, [s for s, _ in pairs])
        self._p_taps = FeatureTaps(self.peer, [t for _, t in pairs])
        was = model.training
        model.eval()
        self.peer.eval()
        try:
            with torch.no_grad():
                s, p = self._outputs(model, probe)
        finally:
            model.train(was)
        self.peer.train()
        if s.logits.shape != p.logits.shape:
            raise DataError(
                f"student logits {tuple(s.logits.shape)} and peer logits {tuple(p.logits.shape)} "
                "differ: different numbers of classes?"
            )
        probe_terms(self.terms, s, p)
        probe_terms(self.peer_terms, p, s)

    def detach(self) -> None:
        for taps in (self._s_taps, self._p_taps):
            if taps is not None:
                taps.remove()
        self._s_taps = self._p_taps = None
        self.peer.eval()

    def check_labels(self, has_labels: bool) -> None:
        check_terms(self.terms, has_labels)

    def begin_epoch(self, loader, epoch: int, epochs: int) -> None:
        self.clock.begin_epoch(len(loader), epoch, epochs)
        self.peer.train()

    def _outputs(self, model: nn.Module, x: torch.Tensor) -> tuple[Outputs, Outputs]:
        if self._s_taps is None or self._p_taps is None:
            raise DistillpruneError("call attach() before using the MutualDistiller")
        self._s_taps.clear()
        self._p_taps.clear()
        mask = sequence_mask(x)
        s = Outputs(call(model, x), dict(self._s_taps.features), mask)
        p = Outputs(call(self.peer, x), dict(self._p_taps.features), mask)
        return s, p

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        progress = self.clock.tick()
        s, p = self._outputs(model, x)
        s_fixed, p_fixed = s.detach(), p.detach()
        total = sum(t.weight_at(progress) * t.loss(s, p_fixed, y) for t in self.terms)
        total = total + sum(t.weight_at(progress) * t.loss(p, s_fixed, y) for t in self.peer_terms)
        return total, s.logits

    def trainable(self) -> Iterator[nn.Parameter]:
        yield from self.peer.parameters()
        yield from self.losses.parameters()
        yield from self.peer_losses.parameters()

    def to_device(self, device: torch.device) -> MutualDistiller:
        return self.to(device)
