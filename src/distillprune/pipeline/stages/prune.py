"""``prune``: prune a CNN while distilling, through the verb ``prune_`` (``prune.PruneSession``), with the
pipeline's checkpointing trainer; ``run_session`` is every family's prune stage runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from distillprune.data.base import DataBundle, Examples
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.pipeline.state import RunState
from distillprune.prune.api import prune_
from distillprune.prune.cnn import NothingRemoved, nothing_removed
from distillprune.prune.config import PruneConfig, SessionConfig
from distillprune.prune.depth import removable_blocks
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class PruneStage(StageConfig, PruneConfig):
    """`steps` times: prune a little (`depth`: remove residual blocks chosen by the smallest KD-loss
    increase; `width`: channel groups of the dependency graph and whole heads of hand-written attention, scored
    by `l1`/`l2`/`taylor`/`bn_scale`, uniform or global, `round_to: 8` by default; or `unstructured`:
    global/layer magnitude masks on a cubic schedule), `recovery` re-fits the layers each cut disturbed (least
    squares to the dense outputs on calibration images, or data-free bias compensation), then train
    `epochs_per_step` with KD from the dense teacher (a fraction such as 0.25 puts several steps in one epoch;
    `lr_span: stage` runs one lr schedule over all the steps); `target` searches the plan that reaches a MACs
    ratio or a measured speedup (candidates priced by a per-machine latency table, the best ones timed; the
    chosen plan recovered)."""

    example: ClassVar[dict[str, Any]] = {"width": {"ratio": 0.5, "round_to": 4}, "epochs_per_step": 1}

    type: Literal["prune"]

    def dry_run(self, model: Callable[[], nn.Module | None], data: DataBundle, where: str, name: str) -> None:
        """Without a target, the cut this stage asks for on the model it meets: more blocks than it can lose,
        or a width request that removes no channel, is a recipe error before anything trains."""
        if self.target is not None:
            return
        net = model()
        if net is None:
            return
        if self.depth is not None and self.depth.blocks > len(removable_blocks(net)):
            blocks = removable_blocks(net)
            raise RecipeError(
                f"{where}.depth.blocks: {self.depth.blocks} blocks to remove but model "
                f"'{name}' has {len(blocks)} removable residual blocks "
                f"({', '.join(blocks) or 'none'})"
            )
        width = self.width
        if width is not None and width.ratio is not None:
            # the steps' uniform cuts, one-shot on the fresh model (the count does not depend on the scores)
            cfg = PruneConfig(width=width.model_copy(update={"importance": "l1"}), steps=self.steps, distill=None)
            try:
                prune_(net, cfg, Examples(torch.zeros(1, *data.input_shape), data.num_classes))
            except NothingRemoved:
                raise RecipeError(f"{where}.width: {nothing_removed(width)} (checked on model '{name}')") from None
            except DistillpruneError as e:  # e.g. a width.layers pattern that names no layer
                raise RecipeError(f"{where} ({self.type}): {e}") from None


@register_stage(PruneStage)
def run_prune(st: PruneStage, state: RunState, index: int) -> StageOutcome:
    return run_session(st, state, index)


def run_session(st: StageConfig, state: RunState, index: int) -> StageOutcome:
    """Any family's prune stage: the verb ``prune_`` with the stage's config, the run's data, teacher,
    checkpointing trainer, history and context (the stage's config type picks the structure)."""
    assert isinstance(st, SessionConfig)
    teacher = state.resolve_teacher(st.distill) if st.distill else None  # None: the unpruned self
    report = prune_(
        state.model,
        st,
        state.data,
        teacher=teacher,
        trainer=state.trainer(st, index, st.type),
        history=state.spec.history,
        context=state.context(),
    )
    return StageOutcome(report, flags=plan_flags(getattr(report, "plan", None)))


def plan_flags(plan: Any) -> list[str]:
    """A plan that did not land in its target band, as a flag of the stage's row (said on the console and in
    report.md, not only in report.json's plan)."""
    note, achieved, target = (getattr(plan, k, None) for k in ("note", "achieved", "target"))
    if not note:
        return []
    goal = next((f"{v:g}x" for k, v in (target or {}).items() if k in ("latency_speedup", "macs_ratio")), "?")
    got = f"{achieved:.3g}x" if isinstance(achieved, (int, float)) else "?"
    return [f"plan outside the target band (achieved {got} for a target of {goal}): {note}"]
