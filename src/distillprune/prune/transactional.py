"""A uniform width step (Torch-Pruning's pruner) through the one channel cutter: each group cut and checked,
or rolled back and skipped with the reason; a step that Torch-Pruning itself cannot score is retried without
the failing group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distillprune.prune.cut import Cutter, StepFailed
from distillprune.prune.safety import (
    SkippedGroup,
    WidthPruningError,
    describe,
    names_of,
    prunable_groups,
    root_of,
    unsupported,
)

if TYPE_CHECKING:
    import torch_pruning as tp


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
