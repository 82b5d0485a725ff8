"""Coupled channel groups of a model (Torch-Pruning's dependency graph), each with its own width.

A *group* is a set of channels that must be removed together (a conv's outputs, the BatchNorm after it,
the inputs of every consumer, and across residual adds every layer that adds into the same tensor). The
planner gives each group its own kept width (non-uniform, rounded to ``round_to``); :func:`apply_widths`
cuts every group to its planned width, choosing *which* channels by the configured importance criterion,
and records the cut as one :class:`ChannelsOp`.

The heads of an attention written by hand (``prune.heads``) are one group of their own: its channels are the
attention's width, moved a whole head at a time, and its cut removes whole heads; Torch-Pruning's groups of the
q/k/v outputs are left out (they cannot be cut as channels), and an attention whose head count cannot be read
is left whole and named.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from distillprune.prune.config import WidthConfig
from distillprune.prune.cut import CutResult, Cutter, Item, raw_parameter
from distillprune.prune.heads import Attention, HeadCut, channel_scores, find_attentions, head_order
from distillprune.prune.history import ChannelsOp
from distillprune.prune.importance import IMPORTANCE
from distillprune.prune.safety import SkippedGroup
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
    blocks: int = 1  # the groups of a grouped conv in it: channels go a whole position of every block at a time
    fanout: dict[str, int] = field(default_factory=dict)  # channels a layer loses per channel (a fused qkv: 3)
    attention: Attention | None = None  # the attention whose heads this group is (step: one head)

    def lost(self, layer: str, k: int) -> tuple[int, int]:
        """(input, output) channels ``layer`` loses when the group loses ``k`` channels."""
        n = k * self.fanout.get(layer, 1)
        return (n if layer in self.inputs else 0, n if layer in self.outputs else 0)


def _names(dg: tp.DependencyGraph) -> dict[nn.Module, str]:
    return dict(dg._module2name)


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with traceable(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def conv_blocks(group: tp.Group, size: int) -> int | str:
    """How many channel blocks ``group`` must be cut in: 1, or the ``groups`` of the grouped (not depthwise)
    convs it couples -- a grouped conv keeps its groups and loses the same positions in each of them, so its
    channels split evenly; or why the group cannot be cut that way (a reason)."""
    found = {
        m.groups
        for dep, _ in group
        if isinstance(m := dep.target.module, nn.Conv2d)
        and 1 < m.groups
        and not m.groups == m.in_channels == m.out_channels
    }
    if len(found) > 1:
        return f"grouped convs with different groups ({sorted(found)}) share its channels"
    blocks = found.pop() if found else 1
    if size % blocks or size // blocks < 2:
        return f"its {size} channels do not split into the {blocks} groups of its grouped conv"
    return blocks


def attention_heads(group: tp.Group, names: dict[nn.Module, str], model: nn.Module) -> str | None:
    """Why ``group`` is left whole when it cuts the head channels of an attention whose Linears were not told
    apart (``prune.heads.find_attentions``) -- the outputs of a Linear inside a module that declares
    ``num_heads``, but its last Linear (the output projection, whose outputs are the embedding): its forward
    reshapes by a head size it holds, which a channel cut does not update. None otherwise."""
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Linear) or m not in names or not group._DG.is_out_channel_pruning_fn(dep.handler):
            continue
        parent_name = names[m].rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        heads = next((getattr(parent, a) for a in ("num_heads", "n_heads", "heads") if hasattr(parent, a)), None)
        linears = [c for c in parent.modules() if isinstance(c, nn.Linear)]
        if isinstance(heads, int) and m is not linears[-1]:
            return (
                f"the head channels of the attention `{parent_name}` (num_heads={heads}): its forward reshapes by "
                "the head size it was built with"
            )
    return None


def _block_order(imp: torch.Tensor, blocks: int) -> list[int]:
    """Channel order, least important first, moving whole positions: position p of every block together (its
    importance summed over the blocks), so any prefix of ``blocks * n`` channels cuts every block alike."""
    per = imp.numel() // blocks
    positions = torch.argsort(imp.float().cpu().view(blocks, per).sum(0)).tolist()
    return [b * per + p for p in positions for b in range(blocks)]


def channel_groups(
    model: nn.Module,
    example: torch.Tensor,
    width: WidthConfig,
    num_classes: int,
    dg: tp.DependencyGraph | None = None,
    skipped: list[SkippedGroup] | None = None,
) -> tuple[tp.DependencyGraph, list[Group]]:
    """The prunable groups of ``model`` (the classifier and ``width.layers`` exclusions stay whole), with the
    channel order of ``width.importance`` (least important first). A group that cannot be scored or cut as
    planned is left out and, when ``skipped`` is given, named there with the reason."""
    dg = dg or dependency_graph(model, example)
    names = _names(dg)
    criterion = IMPORTANCE.get(width.importance)()
    out = []
    left_out = ignored(model, width.layers, num_classes)
    attentions = find_attentions(model)
    qkv = {model.get_submodule(n): a for a in attentions for n in a.qkv}
    for g in dg.get_all_groups(ignored_layers=left_out, root_module_types=ROOTS):
        root = g[0].dep.target.module
        att = next((qkv[d.target.module] for d, _ in g if d.target.module in qkv and _is_out(g, d)), None)
        if att is not None:  # its heads are a group of their own (below), or the attention stays whole
            if att.why is not None and skipped is not None and att.root not in {s.layer for s in skipped}:
                reason = f"the head channels of the attention `{att.name}`: {att.why}, so it was left whole"
                skipped.append(SkippedGroup(att.root, reason))
            continue
        size = len(g[0].idxs)
        blocks = conv_blocks(g, size)
        why = blocks if isinstance(blocks, str) else raw_parameter(g) or attention_heads(g, names, model)
        try:
            with torch.no_grad():
                imp = criterion(g) if why is None else None
        except Exception as e:  # noqa: BLE001 - Torch-Pruning's scoring fails on graphs it mishandles
            why = f"Torch-Pruning cannot score it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if why is not None:
            if skipped is not None:
                skipped.append(SkippedGroup(names.get(root, "?"), why + ", so it was left whole"))
            continue
        if imp is None or size < 2:
            continue
        assert isinstance(blocks, int)
        step = -(-(width.round_to or 1) // blocks) * blocks  # a whole number of positions of every block
        min_keep = max(step, (size - int(width.max_ratio * size)) // blocks * blocks)
        if min_keep >= size:
            continue
        grp = Group(names[root], size, min_keep, step, blocks=blocks, order=_block_order(imp, blocks))
        for dep, _ in g:
            m = dep.target.module
            if isinstance(m, ROOTS) and m in names:
                (grp.outputs if dg.is_out_channel_pruning_fn(dep.handler) else grp.inputs).append(names[m])
        out.append(grp)
    out += [h for a in attentions if (h := _head_group(model, a, width, left_out)) is not None]
    return dg, out


def _is_out(group: tp.Group, dep: tp.Dependency) -> bool:
    return bool(group._DG.is_out_channel_pruning_fn(dep.handler))


def _head_group(model: nn.Module, att: Attention, width: WidthConfig, left_out: list[nn.Module]) -> Group | None:
    """The group of ``att``'s heads (one head per step, at least one kept and no more than ``width.max_ratio``
    of them cut), or None when it cannot or may not be cut."""
    layers = [model.get_submodule(n) for n in (*att.qkv, att.proj)]
    if att.why is not None or att.heads < 2 or any(m in left_out for m in layers):
        return None
    min_heads = max(1, att.heads - int(width.max_ratio * att.heads))
    if min_heads >= att.heads:
        return None
    d = att.head_dim
    order = head_order(channel_scores(model, att, width.importance), d)
    fanout = {att.qkv[0]: 3} if att.fused else {}
    outputs, inputs = [*att.qkv, att.mix], [att.proj, att.scores]  # (the matmuls, as latency_table prices them)
    return Group(att.root, att.width, min_heads * d, d, outputs, inputs, order, fanout=fanout, attention=att)


def gradients(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> None:
    """Accumulate the KD loss's gradients on every parameter (Taylor costs and taylor importance read them)."""
    from distillprune.prune.structured import accumulate_gradients

    with traceable(model):
        accumulate_gradients(model, batches, loss_fn)


def taylor_costs(dg: tp.DependencyGraph, groups: Sequence[Group]) -> list[Group]:
    """Fill each group's ``cost`` from the gradients on the model (see :func:`gradients`): |w * dL/dw| summed
    over the group's coupled parameters per channel, a first-order estimate of the KD-loss increase of
    removing it, comparable across groups. Returns the groups it could price (Torch-Pruning's Taylor scoring
    fails on a few graphs it mishandles; such a group is not planned)."""
    taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    by_name = {n: m for m, n in _names(dg).items()}
    priced = []
    for grp in groups:
        if grp.attention is not None:  # the same sum, over its rows of q, k, v and columns of the projection
            grp.cost = channel_scores(dg.model, grp.attention, "taylor").tolist()
            priced.append(grp)
            continue
        root = by_name[grp.root]
        try:
            g = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(grp.size)))
            with torch.no_grad():
                imp = taylor(g)
        except Exception:  # noqa: BLE001, S112 - left out of the plan, like a group the cutter skips
            continue
        grp.cost = [0.0] * grp.size if imp is None else imp.float().abs().cpu().tolist()
        priced.append(grp)
    return priced


@dataclass
class WidthCut:
    """A planned cut: the op recording it (None when nothing was cut) and the groups left whole, and why."""

    op: ChannelsOp | None
    skipped: list[SkippedGroup]
    result: CutResult


def apply_widths(
    model: nn.Module,
    example: torch.Tensor,
    width: WidthConfig,
    num_classes: int,
    keep: dict[str, int],
    onnx: bool = True,
) -> WidthCut:
    """Cut each group named in ``keep`` (by root) to that many channels, least important first, through the
    transactional cutter (:class:`prune.cut.Cutter`): a group that breaks the model is rolled back and
    named in ``skipped``; one op records what was cut."""
    skipped: list[SkippedGroup] = []
    with traceable(model):
        dg, groups = channel_groups(model, example, width, num_classes, skipped=skipped)
        by_name = {n: m for m, n in _names(dg).items()}
        wanted = {g.root for g in groups if keep.get(g.root, g.size) < g.size}

        def items() -> Iterator[Item]:
            for grp in groups:
                if grp.root not in wanted:
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

        result = Cutter(model, dg, example, onnx=onnx).cut(items()) if wanted else CutResult()
    skipped += result.skipped
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
    left = {s.layer for s in cut.skipped}
    return [g for g in groups if g.root not in left], cut.skipped


def priced_groups(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int
) -> tuple[list[Group], list[SkippedGroup]]:
    """The groups a plan may cut -- scored, priced (Taylor costs from the gradients on ``model``) and surviving
    the cutter at their deepest cut -- and those left whole, with the reasons."""
    skipped: list[SkippedGroup] = []
    dg, groups = channel_groups(model, example, width, num_classes, skipped=skipped)
    groups, left = cuttable(model, example, width, num_classes, taylor_costs(dg, groups))
    return groups, skipped + left
