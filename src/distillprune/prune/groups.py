"""Coupled channel groups of a model (Torch-Pruning's dependency graph), each with its own width.

A *group* is a set of channels that must be removed together (a conv's outputs, the BatchNorm after it,
the inputs of every consumer, and across residual adds every layer that adds into the same tensor). The
planner gives each group its own kept width (non-uniform, rounded to ``round_to``); :func:`apply_widths`
cuts every group to its planned width, choosing *which* channels by the configured importance criterion,
and records the cut as one :class:`ChannelsOp`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from distillprune.prune.config import WidthConfig
from distillprune.prune.history import ChannelsOp
from distillprune.prune.importance import IMPORTANCE
from distillprune.prune.structured import ignored, traceable

ROOTS = (nn.Conv2d, nn.Linear)


@dataclass
class Group:
    """One coupled channel group: its root layer, size, and the Conv/Linear inputs/outputs it changes."""

    root: str  # module name whose output channels root the group
    size: int  # channels now
    min_keep: int  # never fewer (round_to, and 1 - max_ratio of the size)
    step: int  # channels removed per planning step (round_to)
    outputs: list[str] = field(default_factory=list)  # Conv/Linear whose out channels shrink with the group
    inputs: list[str] = field(default_factory=list)  # Conv/Linear whose in channels shrink with the group
    order: list[int] = field(default_factory=list)  # channel indices, least important first (configured criterion)
    cost: list[float] = field(default_factory=list)  # first-order KD-loss increase of removing each channel (Taylor)


def _names(dg: tp.DependencyGraph) -> dict[nn.Module, str]:
    return dict(dg._module2name)


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with traceable(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _supported(group: tp.Group) -> bool:
    """Grouped (not depthwise) convolutions inside a group need channel-group bookkeeping we do not plan."""
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            return False
    return True


def channel_groups(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int, dg: tp.DependencyGraph | None = None
) -> tuple[tp.DependencyGraph, list[Group]]:
    """The prunable groups of ``model`` (the classifier and ``width.layers`` exclusions stay whole), with the
    channel order of ``width.importance`` (least important first)."""
    dg = dg or dependency_graph(model, example)
    names = _names(dg)
    criterion = IMPORTANCE.get(width.importance)()
    out = []
    for g in dg.get_all_groups(ignored_layers=ignored(model, width.layers, num_classes), root_module_types=ROOTS):
        if not _supported(g):
            continue
        root = g[0].dep.target.module
        size = len(g[0].idxs)
        with torch.no_grad():
            imp = criterion(g)
        if imp is None or size < 2:
            continue
        step = width.round_to or 1
        min_keep = max(step, size - int(width.max_ratio * size))
        if min_keep >= size:
            continue
        grp = Group(names[root], size, min_keep, step, order=torch.argsort(imp.float().cpu()).tolist())
        for dep, _ in g:
            m = dep.target.module
            if isinstance(m, ROOTS) and m in names:
                (grp.outputs if dg.is_out_channel_pruning_fn(dep.handler) else grp.inputs).append(names[m])
        out.append(grp)
    return dg, out


def gradients(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> None:
    """Accumulate the KD loss's gradients on every parameter (Taylor costs and taylor importance read them)."""
    from distillprune.prune.structured import accumulate_gradients

    with traceable(model):
        accumulate_gradients(model, batches, loss_fn)


def taylor_costs(dg: tp.DependencyGraph, groups: Sequence[Group]) -> None:
    """Fill each group's ``cost`` from the gradients on the model (see :func:`gradients`): |w * dL/dw| summed
    over the group's coupled parameters per channel, a first-order estimate of the KD-loss increase of
    removing it, comparable across groups."""
    taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    by_name = {n: m for m, n in _names(dg).items()}
    for grp in groups:
        root = by_name[grp.root]
        g = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(grp.size)))
        with torch.no_grad():
            imp = taylor(g)
        grp.cost = [0.0] * grp.size if imp is None else imp.float().abs().cpu().tolist()


def apply_widths(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int, keep: dict[str, int]
) -> ChannelsOp | None:
    """Cut each group named in ``keep`` (by root) to that many channels, least important first; one op."""
    dg, groups = channel_groups(model, example, width, num_classes)
    by_name = {n: m for m, n in _names(dg).items()}
    cuts = []
    for grp in groups:
        k = keep.get(grp.root)
        if k is None or k >= grp.size:
            continue
        cuts.append((by_name[grp.root], sorted(grp.order[: grp.size - k])))
    if not cuts:
        return None
    with traceable(model):
        for root, idxs in cuts:
            g = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)
            if dg.check_pruning_group(g):
                g.prune()
    return ChannelsOp([[n, bool(o), [int(i) for i in idx]] for n, o, idx in dg.pruning_history()])
