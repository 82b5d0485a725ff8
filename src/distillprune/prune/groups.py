"""Every CNN width cut: each group of the enumerator (``prune.channels``) cut to the width a schedule gave it
(``prune.schedule``: a uniform step, a planned step, or the planner's candidates), least important channels
first, through the one transactional cutter (``prune.cut.Cutter``), recorded as one :class:`ChannelsOp`.
What a plan may cut is what survives the cutter at the deepest cut the plan allows (:func:`priced_groups`)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distillprune.prune.channels import Group, Groups, SkippedGroup, enumerate_groups
from distillprune.prune.config import WidthConfig
from distillprune.prune.criteria import criterion, taylor_price, traceable
from distillprune.prune.cut import CutResult, Cutter, Item
from distillprune.prune.heads import HeadCut
from distillprune.prune.history import ChannelsOp


@dataclass
class WidthCut:
    """A cut: the op recording it (None when nothing was cut) and the groups left whole, and why."""

    op: ChannelsOp | None
    skipped: list[SkippedGroup]
    result: CutResult


def _items(found: Groups, keep: dict[str, int]) -> Iterator[Item]:
    """What the cutter is fed: each group that loses channels, its least important ones first."""
    dg = found.dg
    by_name = {n: m for m, n in dg._module2name.items()}
    for grp in found.groups:
        if keep.get(grp.root, grp.size) >= grp.size:
            continue
        cut = (grp.size - keep[grp.root]) // grp.blocks * grp.blocks  # a grouped conv keeps its groups
        if grp.attention is not None:
            gone = sorted({c // grp.step for c in grp.order[: cut // grp.step * grp.step]})
            if gone:
                yield HeadCut.of(grp.attention, gone)
            continue
        if not cut:
            continue
        root, idxs = by_name[grp.root], sorted(grp.order[:cut])
        try:
            yield dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)
        except Exception as e:  # noqa: BLE001 - the index mapping of a graph Torch-Pruning mishandles
            yield SkippedGroup(grp.root, f"Torch-Pruning cannot map its channels ({e}), so it was left whole")


def apply_widths(
    model: nn.Module,
    example: torch.Tensor,
    width: WidthConfig,
    num_classes: int,
    keep: dict[str, int],
    onnx: bool = True,
    groups: Groups | None = None,
) -> WidthCut:
    """Cut each group named in ``keep`` (by root) to that many channels, least important first (``groups``: the
    enumeration of ``model`` to cut from, else enumerated now), through the transactional cutter: a group that
    breaks the model is rolled back and named in ``skipped``; one op records what was cut."""
    with traceable(model):
        found = groups or enumerate_groups(model, example, width, num_classes)
        wanted = any(keep.get(g.root, g.size) < g.size for g in found.groups)
        result = Cutter(model, found.dg, example, onnx=onnx).cut(_items(found, keep)) if wanted else CutResult()
    skipped = found.skipped + result.skipped
    entries = [[n, bool(o), [int(i) for i in idx]] for n, o, idx in result.entries]
    op = ChannelsOp(entries, result.heads) if entries or result.heads else None
    return WidthCut(op, skipped, result)


def cuttable(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int, groups: Sequence[Group]
) -> tuple[list[Group], list[SkippedGroup]]:
    """The groups that survive being cut as far as the plan may cut them (each to ``min_keep``, on a copy,
    through the cutter): the planner prices only these, so a group the cut would skip cannot carry the plan."""
    trial = copy.deepcopy(model)  # (a deep copy has no gradients: taylor could not order its channels)
    by_size = width.model_copy(update={"importance": "l2"})  # which channels go does not decide survival
    cut = apply_widths(trial, example, by_size, num_classes, {g.root: g.min_keep for g in groups})
    left = {s.layer for s in cut.result.skipped}
    return [g for g in groups if g.root not in left], cut.result.skipped


def priced_groups(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int
) -> tuple[list[Group], list[SkippedGroup]]:
    """The groups a plan may cut -- scored, priced (summed Taylor from the gradients on ``model``), able to lose
    channels within ``max_ratio`` and surviving the cutter at their deepest cut -- and those left whole, with
    the reasons."""
    found = enumerate_groups(model, example, width, num_classes, criterion(width.importance))
    priced = []
    for g in found.groups:
        if g.min_keep >= g.size:
            continue
        cost = taylor_price(g)
        if cost is not None:  # (a group Torch-Pruning cannot price is not planned, like one the cutter skips)
            g.cost = cost
            priced.append(g)
    groups, left = cuttable(model, example, width, num_classes, priced)
    return groups, found.skipped + left
