"""One trial: the recipe with the drawn values, run as an ordinary run folder, judged on the validation split.

What a trial never sees: the test set. Its recipe sets ``data.validation_split`` (a seeded, class-balanced
share of the training split stands in for the test split inside the run), so every number it reports --
each epoch's validation loss, the stages' top-1, the objective -- comes from training data.

Early stopping: each epoch's record (``metrics.jsonl``, delivered live through ``train.logging.listen``)
gives the trial an intermediate value: ``val_loss``, the stage's own objective on the validation split
(the KD loss in distil stages), or, for an objective that cannot be evaluated apart from training, the
validation error. The step is the epoch's position in the whole run, so trials are compared epoch by epoch.

Plans: a trial's prune stage plans inside ``prune.plan_store.shared_plans(<tune folder>/plans)``, so trials whose
planner inputs are equal (the model, the data the planner reads, the target and width options -- a drawn
learning rate or KD temperature changes none of them) plan once and reuse that plan.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillprune.errors import DistillpruneError
from distillprune.pipeline import rundir
from distillprune.prune.plan_store import shared_plans
from distillprune.recipes.schema import Recipe
from distillprune.report.report import CompressionReport
from distillprune.train.logging import listen
from distillprune.tune.space import Space, build, overrides

if TYPE_CHECKING:
    import optuna

OBJECTIVES = ("top1", "speedup")
#: the folder of the tune folder where trials share their plans
PLANS = "plans"


@dataclass
class Setup:
    """What every trial of a study shares."""

    raw: dict[str, Any]  # the base recipe as data
    where: str  # the recipe's name in messages
    space: Space
    fixed: list[str]  # the --set strings tune adds to every trial (hold-out split, budget, val_loss)
    objectives: tuple[str, ...]
    trials_dir: Path
    speed_key: str  # the latency the speedup objective reads ("bs1")
    quiet: bool = True
    trust_code: bool = False  # as compress's: checkpoints and HF folders the recipe names may run their code

    def recipe(self, values: dict[str, Any]) -> Recipe:
        return build(self.raw, [*self.fixed, *overrides(values)], self.where)

    def sets(self, values: dict[str, Any]) -> list[str]:
        return [*self.fixed, *overrides(values)]


def folder_of(trials_dir: Path, trial: optuna.Trial) -> Path:
    """A trial's run folder. A retried trial (its process was killed; Optuna's RetryHeartbeatStaleTrialCallback
    copies the values and user attributes) continues in the original's folder, when the study names one of
    ours (the study database is data: a name like ``../../x`` is refused)."""
    name = trial.user_attrs.get("folder") or f"trial-{trial.number:04d}"
    if not is_trial_folder(name):
        raise DistillpruneError(
            f"trial {trial.number}: the study names its run folder {str(name)!r:.80}; expected trial-NNNN"
        )
    return trials_dir / name


def is_trial_folder(name: object) -> bool:
    """Whether ``name`` is a run folder name tune gives a trial (``trial-0007``): one plain name, no path."""
    return isinstance(name, str) and re.fullmatch(r"trial-\d{4,9}", name) is not None


class Reporter:
    """Turns each epoch's record into the trial's intermediate value and asks the pruner whether to stop."""

    def __init__(self, trial: optuna.Trial, prunable: bool, offset: int, first_stage: int = 1):
        self.trial, self.prunable, self.step, self.first_stage = trial, prunable, offset, first_stage
        self.curve: list[float] = list(trial.user_attrs.get("curve", []))[:offset]

    def __call__(self, tag: str, step: int, values: dict[str, Any]) -> None:
        import optuna

        value = intermediate(values)
        if value is None:
            return
        self.curve.append(value)
        self.trial.set_user_attr("curve", self.curve)
        self.step += 1
        # Optuna's pruners judge single-objective studies only; and the stages before the first one the space
        # touches run the same in every trial (same recipe, same seed): their epochs would only fill the
        # pruner's first rungs with ties, so the rungs start at the first searched stage
        if not self.prunable or _stage_of(tag) < self.first_stage:
            return
        self.trial.report(value, self.step - 1)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", f"{tag} epoch {step}")
            raise optuna.TrialPruned(f"pruned after {tag} epoch {step} (validation value {value:.4g})")


def _stage_of(tag: str) -> int:
    """The 1-based stage number of a log tag ("2:prune/step1" -> 2); 0 when the tag names none."""
    head = tag.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def first_searched_stage(paths: list[str]) -> int:
    """The 1-based number of the first stage a path under ``stages.`` names; 1 when any path is outside
    the stages (data, model: every stage may differ)."""
    numbers = [int(p.split(".")[1]) + 1 if p.startswith("stages.") and p.split(".")[1].isdigit() else 1 for p in paths]
    return min(numbers, default=1)


def intermediate(values: dict[str, Any]) -> float | None:
    """The epoch's value to compare trials by (lower is better): the validation loss, else the error."""
    v = values.get("val_loss")
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    acc = values.get("test_acc")  # the validation split's top-1 inside a trial
    if isinstance(acc, (int, float)) and math.isfinite(acc):
        return 100.0 - float(acc)
    return None


def run_trial(setup: Setup, trial: optuna.Trial) -> float | tuple[float, float]:
    """Draw the space, run the trial's recipe in its run folder, return its objective value(s)."""
    from distillprune.pipeline.run import compress

    values = {p.path: p.suggest(trial) for p in setup.space.params}
    recipe = setup.recipe(values)
    folder = folder_of(setup.trials_dir, trial)
    trial.set_user_attr("folder", folder.name)
    trial.set_user_attr("sets", setup.sets(values))
    resume = rundir.completed(folder) > 0  # a retried trial continues where its run stopped
    offset = _logged_epochs(folder) if resume else 0
    first = first_searched_stage(setup.space.paths())
    reporter = Reporter(trial, prunable=len(setup.objectives) == 1, offset=offset, first_stage=first)
    # trials whose plan-affecting knobs are equal plan once (prune.plan_store): the planner's inputs are hashed
    with listen(reporter), shared_plans(setup.trials_dir.parent / PLANS):
        report = compress(recipe, folder, resume=resume, quiet=setup.quiet, trust_code=setup.trust_code)
    return objective_values(setup, trial, report)


def _logged_epochs(folder: Path) -> int:
    try:
        return sum(1 for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line)
    except OSError:
        return 0


def objective_values(setup: Setup, trial: optuna.Trial, report: CompressionReport) -> float | tuple[float, float]:
    """Validation top-1 (and the measured speedup) of the run's last measured row, kept on the trial."""
    final = report.final
    if final is None or final.accuracy is None:
        raise DistillpruneError("the trial's run measured no top-1: the recipe needs labelled data and a stage")
    speedup = report.speedup(final, setup.speed_key)
    trial.set_user_attr("val_top1", final.accuracy)
    trial.set_user_attr("speedup", speedup)
    trial.set_user_attr("latency_ms", final.latency_ms.get(setup.speed_key))
    trial.set_user_attr("macs", final.macs)
    if len(setup.objectives) == 1:
        return 100.0 - final.accuracy  # minimised, like the intermediate values the pruner compares
    if speedup is None:
        raise DistillpruneError(
            f"the speedup objective needs measured latency at {setup.speed_key} (measure.enabled, "
            f"measure.batch_sizes); the trial's last row has {sorted(final.latency_ms) or 'none'}"
        )
    return final.accuracy, speedup
