"""How much each channel of a group matters: one protocol for every criterion and every kind of group.

A criterion is a registered class (``CRITERIA``): ``needs_gradients`` (``prepare`` accumulates a loss's
gradients on calibration batches first, so a one-shot prune without data cannot use it) and ``scores(group)``,
one score per channel (higher: keep) of a channel group (Torch-Pruning's implementation) or of an attention's
whole heads (the same quantity summed over their rows of q, k, v and their column of the output projection). A
criterion that does not apply raises :class:`CannotScore`: the group is left whole and named, never scored some
other way. ``family`` says which models it scores: ``cnn`` (channel and head groups of any model's graph) or
``encoder`` (a Hugging Face encoder's heads and FFN neurons: ``fisher``, registered by
``distillprune.transformers``). The planner's price is the *summed* Taylor term (:func:`taylor_price`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

import torch
import torch_pruning as tp
from torch import nn

from distillprune.core.registry import nearest
from distillprune.prune.heads import Attention
from distillprune.registries import CRITERIA  # (names declared there: listing them imports no torch)


class Group(Protocol):
    """What a criterion reads of a group (``prune.channels.Group``)."""

    size: int
    attention: Attention | None  # the heads of a hand-written attention, or None (a channel group)
    tp: Any  # Torch-Pruning's group (a channel group)
    model: nn.Module | None  # the model (a head group)


LossFn = Callable[[nn.Module, Any, torch.Tensor | None], torch.Tensor]


class CannotScore(Exception):
    """A criterion that does not apply to a group; the message says why (the group is left whole, named)."""


class Criterion:
    """Scores the channels of a group; see the module docstring."""

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    family: ClassVar[str] = "cnn"

    def prepare(self, model: nn.Module, batches: Sequence[Any], loss: LossFn | None = None, seed: int = 0) -> None:
        """Before scoring: accumulate the gradients of ``loss`` on ``batches`` (when ``needs_gradients``)."""
        if self.needs_gradients and loss is not None:
            accumulate_gradients(model, batches, loss)

    def scores(self, group: Any) -> torch.Tensor:
        """One score per channel of ``group``; :class:`CannotScore` when it does not apply."""
        raise NotImplementedError


def criterion(name: str) -> Criterion:
    """The registered criterion ``name`` (an unknown name is a one-line error naming the nearest)."""
    return CRITERIA.get(name)()


def register(cls: type[Criterion]) -> type[Criterion]:
    CRITERIA.register(cls.name)(cls)
    return cls


def check_family(name: str, family: str, field: str) -> str:
    """``name`` when it is a registered criterion of ``family``, else ``ValueError`` naming the ones that are."""
    fits = [n for n, c in CRITERIA.items() if c.family == family]
    if name in fits:
        return name
    why = f"does not score a {family}'s groups" if name in CRITERIA else f"is unknown{nearest(str(name), fits)}"
    raise ValueError(f"{field} {str(name)!r} {why}; expected one of: {', '.join(fits)}")


class _Channels(Criterion):
    """A criterion read from weights: Torch-Pruning's implementation for a channel group, the same quantity
    summed per channel for the heads of an attention."""

    def tp_importance(self) -> Callable[[tp.Group], torch.Tensor | None]:
        raise NotImplementedError

    def per_parameter(self, p: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    #: why Torch-Pruning's implementation may find nothing to score in a group
    nothing = "finds no weight it reads in it"

    @torch.no_grad()
    def scores(self, group: Group) -> torch.Tensor:
        if group.attention is not None:
            return head_scores(group, self.per_parameter)
        imp = self.tp_importance()(group.tp)
        if imp is None:
            raise CannotScore(f"{self.name} {self.nothing}")
        return imp


@register
class L1(_Channels):
    """Sum of |w| over the group's coupled parameters, per channel."""

    name = "l1"

    def tp_importance(self) -> Callable[[tp.Group], torch.Tensor | None]:
        return tp.importance.GroupMagnitudeImportance(p=1)

    def per_parameter(self, p: torch.Tensor) -> torch.Tensor | None:
        return p.abs()


@register
class L2(_Channels):
    """Sum of w^2 over the group's coupled parameters, per channel."""

    name = "l2"

    def tp_importance(self) -> Callable[[tp.Group], torch.Tensor | None]:
        return tp.importance.GroupMagnitudeImportance(p=2)

    def per_parameter(self, p: torch.Tensor) -> torch.Tensor | None:
        return p.pow(2)


@register
class Taylor(_Channels):
    """|w * dL/dw| of the KD loss, per channel (first-order estimate of the loss increase of removing it)."""

    name = "taylor"
    needs_gradients = True

    def tp_importance(self) -> Callable[[tp.Group], torch.Tensor | None]:
        return tp.importance.GroupTaylorImportance()

    def per_parameter(self, p: torch.Tensor) -> torch.Tensor | None:
        return None if p.grad is None else (p * p.grad).abs()


@register
class BnScale(_Channels):
    """|gamma| of the BatchNorm layers in the group (network slimming)."""

    name = "bn_scale"
    nothing = "finds no BatchNorm in it"

    def tp_importance(self) -> Callable[[tp.Group], torch.Tensor | None]:
        return tp.importance.BNScaleImportance()

    def per_parameter(self, p: torch.Tensor) -> torch.Tensor | None:
        raise CannotScore("bn_scale reads BatchNorm scales and an attention's heads have none")


def head_scores(group: Group, score: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """A score per channel of an attention's width (``heads * head_dim``): ``score`` of each parameter summed
    over its rows of q, k, v and its column of the output projection (zero where ``score`` gives nothing)."""
    att, model = group.attention, group.model
    assert att is not None and model is not None
    width = att.width
    total = torch.zeros(width, dtype=torch.float64)
    for name in att.qkv:
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        for p in (layer.weight, layer.bias):
            s = None if p is None else score(p)
            if s is not None:
                rows = s.reshape(s.shape[0], -1).sum(1).double().cpu()
                total += rows.view(-1, width).sum(0) if att.fused else rows
    proj = model.get_submodule(att.proj)
    assert isinstance(proj, nn.Linear)
    s = score(proj.weight)
    if s is not None:
        total += s.sum(0).double().cpu()
    return total


def taylor_price(group: Group) -> list[float] | None:
    """The planner's price of each channel of ``group``: |w * dL/dw| summed over its coupled parameters (the
    gradients of :func:`accumulate_gradients`), not normalised, so groups compare; None when Torch-Pruning
    cannot price it (such a group is not planned)."""
    if group.attention is not None:
        return head_scores(group, Taylor().per_parameter).tolist()
    taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    try:
        with torch.no_grad():
            imp = taylor(group.tp)
    except Exception:  # noqa: BLE001 - Torch-Pruning's scoring fails on a few graphs it mishandles
        return None
    return [0.0] * group.size if imp is None else imp.float().abs().cpu().tolist()


@contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Gradients on: frozen parameters (a teacher) unfrozen and grad mode enabled, restored after. Torch-Pruning
    traces the autograd graph (without it, it finds no dependencies and silently prunes nothing), and a
    criterion's gradients need it too."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def accumulate_gradients(model: nn.Module, batches: Sequence[tuple[Any, Any]], loss: LossFn) -> None:
    """Sum the gradients of ``loss`` over ``batches`` on every parameter, BatchNorm in eval mode (scores must not
    move its running statistics)."""
    model.zero_grad(set_to_none=True)
    was = model.training
    model.eval()
    try:
        with traceable(model):
            for x, y in batches:
                loss(model, x, y).backward()
    finally:
        model.train(was)
