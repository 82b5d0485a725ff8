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

import torch
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


def _find_culprit(pruner: tp.pruner.BasePruner) -> tp.Group | None:
    """The group whose scoring fails (Torch-Pruning scores every group before cutting any)."""
    for group in prunable_groups(pruner):
        try:
            pruner.estimate_importance(group)
            pruner._get_channel_groups(group)
        except Exception:  # noqa: BLE001 - whatever it raised during the step
            return group
    return None


def transactional_step(
    pruner: tp.pruner.BasePruner, model: nn.Module, example: torch.Tensor | None, retries: int = 8
) -> None:
    """``pruner.step()`` through the one channel cutter (:class:`prune.cut.Cutter`): each group is cut and
    checked, or rolled back and skipped (``pruner.skipped``, with the reason, and ignored from then on).
    When Torch-Pruning fails while scoring the step, the step is undone, the failing group skipped and the
    step retried; after ``retries`` skips, or when the failing group cannot be found, the model is restored
    and one line names the group, the pattern and the fix."""
    from distillprune.prune.cut import Cutter, StepFailed

    names = names_of(model)
    skips = 0
    while True:
        step = pruner.current_step
        cutter = Cutter(model, pruner.DG, example)
        try:
            result = cutter.cut(pruner.step(interactive=True), max_skips=retries - skips)
        except StepFailed as e:
            pruner.current_step = step
            culprit = e.group or _find_culprit(pruner)
            if culprit is None or skips >= retries:
                _fail(culprit, names, e.error)
            assert culprit is not None
            skips += 1
            pattern = unsupported(culprit, names)
            root = root_of(culprit)
            pruner.ignored_layers.append(root)
            pruner.skipped.append(
                SkippedGroup(
                    names.get(root, "?"),
                    (pattern + "; " if pattern else "")
                    + f"Torch-Pruning failed on it ({e.error}), so it was left whole",
                )
            )
            continue
        by_name = {n: m for m, n in names.items()}
        for s in result.skipped:  # left whole in the later steps too
            if s.layer in by_name:
                pruner.ignored_layers.append(by_name[s.layer])
        pruner.skipped.extend(result.skipped)
        return


def _fail(group: tp.Group | None, names: dict[nn.Module, str], error: str) -> None:
    if group is None:
        raise WidthPruningError(
            f"width pruning failed ({error}) and no single layer group is to blame; the model "
            "is restored unchanged; fix: narrow width.layers to the layers that should lose "
            "channels"
        )
    root = names.get(root_of(group), "?")
    pattern = unsupported(group, names)
    raise WidthPruningError(
        f"width pruning failed on the layer group of `{root}` ({describe(group, names)})"
        + (f": {pattern}" if pattern else "")
        + f" [{error}]; the model is restored unchanged; fix: keep that "
        f"group out with width.layers.exclude: ['{root}']"
    )
