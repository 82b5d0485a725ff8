"""The one enumerator of what a width cut may remove (``docs/architecture.md``, "One way to cut"): the coupled
channel groups of Torch-Pruning's dependency graph and the whole heads of hand-written attention
(``prune.heads``), each scored by the criterion, and every group left whole with the reason -- grouped convs
whose channels do not split into their groups, a raw ``nn.Parameter`` used by a functional op, a concat or split
feeding a grouped conv, attention whose Linears were not told apart or whose head count cannot be read, a group
the criterion cannot score. The classifier and the layers ``width.layers`` leaves out are never listed. A
uniform step, a planned step and the planner all read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from distillprune.core.batch import is_embedder
from distillprune.core.modules import LayerSelect
from distillprune.errors import DistillpruneError
from distillprune.prune.config import WidthConfig
from distillprune.prune.criteria import CannotScore, Criterion, criterion, traceable
from distillprune.prune.heads import Attention, find_attentions

#: the layers whose output channels root a group (Torch-Pruning's default roots)
ROOTS = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)


@dataclass
class SkippedGroup:
    """A group a cut left whole, and why."""

    layer: str  # the group's root layer (its output channels would have been removed)
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Group:
    """One group: its root layer, size, and the Conv/Linear inputs/outputs it changes, with its channels ordered
    by the criterion (least important first)."""

    root: str  # module name whose output channels root the group
    size: int  # channels now
    min_keep: int  # never fewer in a plan (round_to, and 1 - max_ratio of the size)
    step: int  # channels removed per planning step (round_to; a whole position of every block; one head)
    outputs: list[str] = field(default_factory=list)  # Conv/Linear whose out channels shrink with the group
    inputs: list[str] = field(default_factory=list)  # Conv/Linear whose in channels shrink with the group
    order: list[int] = field(default_factory=list)  # channel indices, least important first (configured criterion)
    cost: list[float] = field(default_factory=list)  # first-order KD-loss increase of removing each channel (Taylor)
    blocks: int = 1  # the groups of a grouped conv in it: channels go a whole position of every block at a time
    fanout: dict[str, int] = field(default_factory=dict)  # channels a layer loses per channel (a fused qkv: 3)
    attention: Attention | None = None  # the attention whose heads this group is (step: one head)
    units: torch.Tensor | None = field(default=None, repr=False)  # normalised score per unit (global ranking)
    tp: Any = field(default=None, repr=False, compare=False)  # Torch-Pruning's group (channel groups)
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the model (head groups)

    @property
    def unit(self) -> int:
        """Channels that go together: a head, or one position of every block of a grouped conv."""
        return self.attention.head_dim if self.attention is not None else self.blocks

    def lost(self, layer: str, k: int) -> tuple[int, int]:
        """(input, output) channels ``layer`` loses when the group loses ``k`` channels."""
        n = k * self.fanout.get(layer, 1)
        return (n if layer in self.inputs else 0, n if layer in self.outputs else 0)


@dataclass
class Groups:
    """What a model offers a width cut: its dependency graph, its groups, and those left whole (why)."""

    dg: tp.DependencyGraph
    groups: list[Group]
    skipped: list[SkippedGroup]


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the logits: pruning them would change the task. An embedding model's last
    Conv/Linear is kept too: its output width is the embedding's, which a vector index downstream (and the
    teacher's embedding, for the losses comparing them) expects unchanged."""
    last = list(model.modules())[-1]
    out: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    out += [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m is last]
    if is_embedder(model):
        final = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1:]
        out += [m for m in final if m not in out]
    return out


def ignored(model: nn.Module, layers: LayerSelect, num_classes: int) -> list[nn.Module]:
    """The layers no group may cut: the classifier and every leaf the selection leaves out."""
    layers.check(model, "width.layers")
    return classifier_layers(model, num_classes) + layers.excluded(model)


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with traceable(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def names_of(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def describe(group: tp.Group, names: dict[nn.Module, str]) -> str:
    """The layers a group couples, for messages: 'a.0 + g.0 (+3 more)'."""
    seen: list[str] = []
    for dep, _ in group:
        n = names.get(dep.target.module)
        if n and n not in seen:
            seen.append(n)
    return " + ".join(seen[:3]) + (f" (+{len(seen) - 3} more)" if len(seen) > 3 else "")


# -- the pre-checks: why a group must stay whole (None: it may be cut) --------------------------------------
def _is_out(group: tp.Group, dep: tp.Dependency) -> bool:
    return bool(group._DG.is_out_channel_pruning_fn(dep.handler))


def joined_into_grouped(group: tp.Group, names: dict[nn.Module, str]) -> str | None:
    """A concat or split whose channels feed a grouped conv through ``group``: Torch-Pruning cuts it with indices
    that do not respect the conv's groups."""
    joins = [d.target.module for d, _ in group if isinstance(d.target.module, (tp.ops._ConcatOp, tp.ops._SplitOp))]
    grouped = [
        d.target.module
        for d, _ in group
        if isinstance(d.target.module, nn.modules.conv._ConvNd) and d.target.module.groups > 1 and not _is_out(group, d)
    ]
    if not (joins and grouped):
        return None
    conv, kind = grouped[0], "concat" if isinstance(joins[0], tp.ops._ConcatOp) else "split"
    return (
        f"{kind} feeding a grouped conv at `{names.get(conv, '?')}` (groups={conv.groups}): Torch-Pruning "
        "cannot map the joined channels onto the conv's groups"
    )


def raw_parameter(group: tp.Group) -> str | None:
    """A bare ``nn.Parameter`` in ``group`` that cannot be cut safely. Torch-Pruning cuts such a parameter along
    its last non-singleton dimension: right for a per-channel scale ``(C,)`` / ``(C, 1, 1)`` and a broadcast
    token ``(1, N, C)``, wrong for a weight used through ``F.conv2d`` / ``F.linear`` (``(out, in, kh, kw)``)."""
    for dep, _ in group:
        p = dep.target.module
        if not isinstance(p, nn.Parameter):
            continue
        wide = [d for d in p.shape if d > 1]
        if len(wide) <= 1 or (p.dim() >= 3 and p.shape[0] == 1):
            continue
        name = group._DG._param_to_name.get(p, "?")
        return (
            f"raw parameter `{name}` {tuple(p.shape)} is used by a functional op (F.conv2d, matmul...): which of "
            "its dimensions are channels cannot be told"
        )
    return None


def conv_blocks(group: tp.Group, size: int) -> int | str:
    """How many channel blocks ``group`` must be cut in: 1, or the ``groups`` of the grouped (not depthwise)
    convs and the group norms it couples -- a grouped conv keeps its groups and loses the same positions in each
    of them, so its channels split evenly; or why the group cannot be cut that way (a reason)."""
    found = set()
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups and not m.groups == m.in_channels == m.out_channels:
            found.add(m.groups)
        elif isinstance(m, nn.GroupNorm) and m.num_groups > 1:
            found.add(m.num_groups)
    if len(found) > 1:
        return f"grouped convs with different groups ({sorted(found)}) share its channels"
    blocks = found.pop() if found else 1
    if size % blocks or size // blocks < 2:
        return f"its {size} channels do not split into the {blocks} groups of its grouped conv"
    return blocks


def attention_heads(group: tp.Group, names: dict[nn.Module, str], model: nn.Module) -> str | None:
    """The head channels of an attention whose Linears were not told apart (``prune.heads.find_attentions``):
    the outputs of a Linear inside a module that declares ``num_heads``, but its last Linear (the output
    projection): its forward reshapes by a head size it holds, which a channel cut does not update."""
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Linear) or m not in names or not _is_out(group, dep):
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


# -- the enumerator ---------------------------------------------------------------------------------------
def enumerate_groups(
    model: nn.Module, example: torch.Tensor, width: WidthConfig, num_classes: int, crit: Criterion | None = None
) -> Groups:
    """Every group ``model`` offers a width cut, scored by ``crit`` (default: ``width.importance``; its
    gradients, if it needs any, already on the model), and every group left whole with the reason."""
    crit = crit or criterion(width.importance)
    left_out = ignored(model, width.layers, num_classes)
    dg = dependency_graph(model, example)
    found = Groups(dg, [], [])
    attentions = find_attentions(model)
    qkv = {model.get_submodule(n): a for a in attentions for n in a.qkv}
    seen = 0
    for g in dg.get_all_groups(ignored_layers=left_out, root_module_types=ROOTS):
        seen += 1
        att = next((qkv[d.target.module] for d, _ in g if d.target.module in qkv and _is_out(g, d)), None)
        if att is None:
            _add_channels(found, model, g, width, crit)
        elif att.why is not None and att.root not in {s.layer for s in found.skipped}:
            reason = f"the head channels of the attention `{att.name}`: {att.why}, so it was left whole"
            found.skipped.append(SkippedGroup(att.root, reason))
    for att in attentions:
        _add_heads(found, model, att, width, crit, left_out)
    if not seen:
        _check_selection(dg, model, width.layers, num_classes)
    return found


def _why_whole(model: nn.Module, g: tp.Group, names: dict[nn.Module, str], size: int) -> int | str:
    blocks = conv_blocks(g, size)
    if isinstance(blocks, str):
        return blocks
    return joined_into_grouped(g, names) or raw_parameter(g) or attention_heads(g, names, model) or blocks


def _add_channels(found: Groups, model: nn.Module, g: tp.Group, width: WidthConfig, crit: Criterion) -> None:
    names = dict(found.dg._module2name)
    root, size = names.get(g[0].dep.target.module, "?"), len(g[0].idxs)
    blocks = _why_whole(model, g, names, size)
    grp = Group(root, size, size, 1, tp=g)
    imp = None
    if isinstance(blocks, int):
        try:
            imp = crit.scores(grp)
        except CannotScore as e:
            blocks = str(e)
        except Exception as e:  # noqa: BLE001 - Torch-Pruning's scoring fails on graphs it mishandles
            blocks = f"Torch-Pruning cannot score it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if isinstance(blocks, str):
        found.skipped.append(SkippedGroup(root, blocks + ", so it was left whole"))
        return
    if imp is None or size < 2:  # (imp is None only when a pre-check left it whole)
        return
    grp.blocks = blocks
    grp.step = -(-(width.round_to or 1) // blocks) * blocks  # a whole number of positions of every block
    grp.min_keep = max(grp.step, (size - int(width.max_ratio * size)) // blocks * blocks)
    grp.units = imp.view(blocks, -1).mean(0).cpu()  # (Torch-Pruning's score per position, for global ranking)
    grp.order = _block_order(grp.units, blocks)
    for dep, _ in g:
        m = dep.target.module
        if isinstance(m, ROOTS) and m in names:
            (grp.outputs if _is_out(g, dep) else grp.inputs).append(names[m])
    found.groups.append(grp)


def _add_heads(
    found: Groups, model: nn.Module, att: Attention, width: WidthConfig, crit: Criterion, left_out: list[nn.Module]
) -> None:
    """The group of ``att``'s heads (one head per step, at least one kept and no more than ``width.max_ratio``
    of them cut in a plan), unless it cannot or may not be cut."""
    layers = [model.get_submodule(n) for n in (*att.qkv, att.proj)]
    if att.why is not None or att.heads < 2 or any(m in left_out for m in layers):
        return
    d = att.head_dim
    min_heads = max(1, att.heads - int(width.max_ratio * att.heads))
    outputs, inputs = [*att.qkv, att.mix], [att.proj, att.scores]  # (the matmuls, as latency_table prices them)
    fanout = {att.qkv[0]: 3} if att.fused else {}
    grp = Group(att.root, att.width, min_heads * d, d, outputs, inputs, fanout=fanout, attention=att, model=model)
    try:
        scores = crit.scores(grp)
    except CannotScore as e:
        found.skipped.append(SkippedGroup(att.root, f"the heads of the attention `{att.name}`: {e}, so they stay"))
        return
    per_head = scores.view(-1, d).sum(1).float()
    grp.units = per_head / per_head.mean() if float(per_head.mean()) > 0 else per_head
    grp.order = head_order(scores, d)
    found.groups.append(grp)


def _block_order(units: torch.Tensor, blocks: int) -> list[int]:
    """Channel order, least important first, moving whole positions: position p of every block together, so any
    prefix of ``blocks * n`` channels cuts every block alike."""
    per = units.numel()
    positions = torch.argsort(units.float()).tolist()
    return [b * per + p for p in positions for b in range(blocks)]


def head_order(scores: torch.Tensor, head_dim: int) -> list[int]:
    """Channel order that moves whole heads, least important head first (its channels' scores summed)."""
    per_head = scores.view(-1, head_dim).sum(1)
    return [h * head_dim + i for h in torch.argsort(per_head).tolist() for i in range(head_dim)]


def _check_selection(dg: tp.DependencyGraph, model: nn.Module, layers: LayerSelect, num_classes: int) -> None:
    """A ``width.layers`` selection that leaves no group of a model that has some is an error."""
    if layers == LayerSelect():
        return  # nothing in the model can lose channels (e.g. one Linear): the step removes nothing
    keep = [m for c in classifier_layers(model, num_classes) for m in c.modules()]
    everything = list(dg.get_all_groups(ignored_layers=keep, root_module_types=ROOTS))
    if everything:
        raise DistillpruneError(
            f"width.layers (include {layers.include}, exclude {layers.exclude}) leaves none of the "
            f"{len(everything)} prunable layer groups of {type(model).__name__}: nothing would be pruned"
        )
