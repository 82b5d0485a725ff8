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


Snapshot = list[tuple[nn.Module, dict, dict, dict, dict]]


def _snapshot(model: nn.Module) -> Snapshot:
    # Torch-Pruning replaces parameters and buffers by new, smaller tensors and rewrites attributes
    # (in_channels...): keeping each module's attribute dicts (shallow copies) is enough to undo a step, and
    # the modules stay the same objects, so the pruner's dependency graph stays valid for a retry
    return [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]


def _restore(snapshot: Snapshot) -> None:
    for m, attrs, params, buffers, modules in snapshot:
        m.__dict__.clear()
        m.__dict__.update(attrs)
        m.__dict__.update(_parameters=dict(params), _buffers=dict(buffers), _modules=dict(modules))


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
    """``pruner.step()`` group by group, all or nothing. When Torch-Pruning fails on a group (or the model no
    longer runs after it), the model is restored, that group is skipped (``pruner.skipped``, with the error)
    and the step is retried; when the failing group cannot be found, or after ``retries`` skips, the model is
    restored and one line names the group, the pattern and the fix.

    The model runs once after the step; only when that fails is the step redone with a run after every group,
    to find the group that broke it (a run per group would cost more than the cut itself)."""
    names = names_of(model)
    was = model.training
    checked, skips = False, 0
    while True:
        snapshot, history, step = _snapshot(model), len(pruner.DG._pruning_history), pruner.current_step
        cutting = None
        try:
            for group in pruner.step(interactive=True):
                cutting = group
                group.prune()
                if checked:
                    _run(model, example, was)
                cutting = None
            _run(model, example, was)
            return
        except Exception as e:  # noqa: BLE001 - Torch-Pruning and the model's forward raise anything
            _restore(snapshot)
            model.train(was)
            del pruner.DG._pruning_history[history:]
            pruner.current_step = step
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            culprit = cutting if cutting is not None else _find_culprit(pruner)
            if culprit is None and not checked and example is not None:
                checked = True  # the model broke somewhere in the step: redo it group by group to find where
                continue
            if culprit is None or skips == retries:
                _fail(culprit, names, error)
            assert culprit is not None
            skips += 1
            pattern = unsupported(culprit, names)
            root = root_of(culprit)
            pruner.ignored_layers.append(root)
            pruner.skipped.append(
                SkippedGroup(
                    names.get(root, "?"),
                    (pattern + "; " if pattern else "") + f"Torch-Pruning failed on it ({error}), so it was left whole",
                )
            )


def _run(model: nn.Module, example: torch.Tensor | None, was: bool) -> None:
    if example is None:
        return
    model.eval()
    with torch.no_grad():
        model(example)
    model.train(was)


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
