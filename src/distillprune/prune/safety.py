"""Width pruning that never leaves a model half-cut.

Torch-Pruning's dependency graph covers most graphs, but not all: a ``torch.cat`` (or split) whose channels
feed a grouped convolution is cut with indices that do not respect the conv's groups (``INDICES element is
out of DATA bounds``, or a model that no longer runs). So, before cutting, every layer group is checked
for the patterns we know Torch-Pruning mishandles, and such a group is skipped (its root layer joins the
ignored layers) and listed with the reason; and each step is a transaction: the model is copied first, each
group is cut in turn and the model must still run afterwards; on any failure the model is restored and the
error names the group, the pattern and the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch_pruning as tp
from torch import nn

from distillprune.errors import DistillpruneError


class WidthPruningError(DistillpruneError):
    """Width pruning failed on a layer group; the model was restored as it was before the step."""


@dataclass
class SkippedGroup:
    """A layer group width pruning left alone, and why."""

    layer: str  # the group's root layer (its output channels would have been removed)
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def names_of(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def root_of(group: tp.Group) -> nn.Module:
    return group[0].dep.target.module


def describe(group: tp.Group, names: dict[nn.Module, str]) -> str:
    """The layers a group couples, for messages: 'a.0 -> g.0 (+3 more)'."""
    seen: list[str] = []
    for dep, _ in group:
        n = names.get(dep.target.module)
        if n and n not in seen:
            seen.append(n)
    return " + ".join(seen[:3]) + (f" (+{len(seen) - 3} more)" if len(seen) > 3 else "")


def unsupported(group: tp.Group, names: dict[nn.Module, str]) -> str | None:
    """Why Torch-Pruning cannot cut ``group`` correctly, or None when it can (as far as we know)."""
    joins = [
        dep.target.module for dep, _ in group if isinstance(dep.target.module, (tp.ops._ConcatOp, tp.ops._SplitOp))
    ]
    grouped = [
        dep.target.module
        for dep, _ in group
        if isinstance(dep.target.module, nn.modules.conv._ConvNd)
        and dep.target.module.groups > 1
        and not group._DG.is_out_channel_pruning_fn(dep.handler)
    ]
    if joins and grouped:
        conv = grouped[0]
        kind = "concat" if isinstance(joins[0], tp.ops._ConcatOp) else "split"
        return (
            f"{kind} feeding a grouped conv at `{names.get(conv, '?')}` (groups={conv.groups}): Torch-Pruning "
            "cannot map the joined channels onto the conv's groups"
        )
    return None


def skip_unsupported(pruner: tp.pruner.BasePruner, model: nn.Module) -> list[SkippedGroup]:
    """Add the root layer of every unsupported group to the pruner's ignored layers; returns what was skipped."""
    names = names_of(model)
    skipped: list[SkippedGroup] = []
    for group in list(prunable_groups(pruner)):
        reason = unsupported(group, names)
        if reason is not None:
            root = root_of(group)
            pruner.ignored_layers.append(root)
            skipped.append(SkippedGroup(names.get(root, "?"), reason))
    return skipped


def prunable_groups(pruner: tp.pruner.BasePruner, ignored: list[nn.Module] | None = None) -> list[tp.Group]:
    return list(
        pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers if ignored is None else ignored,
            root_module_types=pruner.root_module_types,
        )
    )
