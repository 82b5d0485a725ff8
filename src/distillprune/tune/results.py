"""After the search: the trials as records, the best ones, the test set read once for them, importances,
and the files (``best.yaml``, ``tune.json``, ``tune.html``)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distillprune.core.io import loads, write_json, write_text
from distillprune.errors import DistillpruneError
from distillprune.recipes.schema import Recipe, apply_overrides, load_recipe
from distillprune.tune.report import TrialRecord, TuneReport
from distillprune.tune.trial import Setup, is_trial_folder

if TYPE_CHECKING:
    import optuna


def finish(
    study: optuna.Study,
    setup: Setup,
    base: Recipe,
    folder: Path,
    sampler: str,
    pruner: str,
    identity: dict[str, Any],
) -> TuneReport:
    records = [record(t, setup) for t in study.get_trials(deepcopy=False)]
    best = _best(study)
    rep = TuneReport(
        setup.where,
        list(setup.objectives),
        sampler,
        "none (Optuna prunes single-objective studies only)" if len(setup.objectives) > 1 else pruner,
        identity["budget_fraction"],
        identity["validation_split"],
        setup.speed_key,
        records,
        best,
        _chosen(records, best),
    )
    rep.importances, rep.importance_note = importances(study)
    folders = {
        t.number: t.folder if t.folder and is_trial_folder(t.folder) else f"trial-{t.number:04d}" for t in records
    }
    tested = test_top1(base, setup, folder, best, folders)  # the one place the test set is read
    for n, acc in tested.items():
        rep.trial(n).test_top1 = acc
    if rep.chosen is not None:
        rep.files["best.yaml"] = str(write_best(rep.trial(rep.chosen), setup, folder / "best.yaml"))
    rep.files["tune.json"] = str(folder / "tune.json")
    rep.files["tune.html"] = str(folder / "tune.html")
    rep.save(folder)
    from distillprune.tune.html import write_tune_html

    write_tune_html(rep, folder)
    return rep


def record(t: optuna.trial.FrozenTrial, setup: Setup) -> TrialRecord:
    """One trial as data; parameters decoded to the recipe's values."""
    decode = {p.path: p for p in setup.space.params}
    params = {k: decode[k].decode(v) if k in decode else v for k, v in t.params.items()}
    a = t.user_attrs
    done = t.datetime_complete is not None and t.datetime_start is not None
    return TrialRecord(
        t.number,
        t.state.name,
        params,
        a.get("folder"),
        a.get("val_top1"),
        a.get("speedup"),
        a.get("latency_ms"),
        a.get("macs"),
        list(a.get("curve", [])),
        a.get("pruned_at"),
        round((t.datetime_complete - t.datetime_start).total_seconds(), 2) if done else None,  # type: ignore[operator]
    )


def _best(study: optuna.Study) -> list[int]:
    """The best trial (one objective) or the Pareto front (two), by trial number; empty before any completes."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:  # best_trials would list every trial tied with the best value
        return [study.best_trial.number]
    return sorted(t.number for t in study.best_trials)


def _chosen(records: list[TrialRecord], best: list[int]) -> int | None:
    """The trial best.yaml holds: the best validation top-1 among the best trials (then the faster)."""
    if not best:
        return None
    pool = [r for r in records if r.number in best]
    return max(pool, key=lambda r: (r.val_top1 or 0.0, r.speedup or 0.0, -r.number)).number


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances for the validation error, or why there are none."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 completed trials; this study has {len(complete)}"
    # the validation error either way: minimised, as Optuna's default evaluator (PED-ANOVA) assumes
    target = None if len(study.directions) == 1 else (lambda t: 100.0 - t.values[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its note on minimising: the target is minimised
            imp = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        return None, f"parameter importances unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    note = f"Optuna's get_param_importances for the validation error, over {len(complete)} completed trials"
    return {k: round(float(v), 4) for k, v in imp.items()}, note


def test_top1(base: Recipe, setup: Setup, folder: Path, best: list[int], folders: dict[int, str]) -> dict[int, float]:
    """Top-1 on the recipe's own test split of each best trial's final model, evaluated once per trial:
    kept in ``<out>/test.json`` so a resumed search does not read the test set again for the same trial.
    ``folders``: each trial's run folder under ``trials/`` (a retried trial runs in the killed one's)."""
    cache_path = folder / "test.json"
    cache = _read_cache(cache_path)
    todo = [n for n in best if str(n) not in cache]
    if todo:
        from distillprune.data.sources import load_data

        data = load_data(base.data)  # the user's split: the test set, read for the first time here
        if data.test.y is not None:
            for n in todo:
                cache[str(n)] = _evaluate_trial(setup.trials_dir / folders[n], data, base)
            write_json(cache_path, cache)
    return {n: cache[str(n)] for n in best if str(n) in cache}


def _read_cache(path: Path) -> dict[str, float]:
    """``test.json``: trial number -> test top-1, as this module writes it; anything else is one line."""
    if not path.is_file():
        return {}
    try:
        cache = loads(path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in cache.items()
        ):
            raise ValueError("expected a mapping of trial numbers to top-1 percentages")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DistillpruneError(
            f"{path}: corrupt ({e}); delete it to evaluate the best trial(s) on the test set again"
        ) from None
    return cache


def _evaluate_trial(run: Path, data: Any, base: Recipe) -> float:
    from distillprune.core.checkpoint import load_checkpoint
    from distillprune.pipeline.rundir import completed_stage
    from distillprune.train.trainer import evaluate

    model, _, _ = load_checkpoint(completed_stage(run))
    return round(evaluate(model, data, batch_size=base.data.eval_batch_size, runtime=base.runtime), 2)


def write_best(t: TrialRecord, setup: Setup, path: Path) -> Path:
    """The chosen trial's recipe (the base recipe with its values and tune's settings), checked to load
    back through the strict schema to the very recipe the trial ran."""
    sets = [*setup.fixed, *(f"{k}={json.dumps(v)}" for k, v in t.params.items())]
    raw = apply_overrides(copy.deepcopy(setup.raw), sets)
    header = (
        f"# distillprune tune: trial {t.number} of {setup.where}, validation top-1 {t.val_top1}%"
        + (f", {t.speedup:.2f}x measured" if t.speedup is not None else "")
        + ".\n# As the trial ran: judged on data.validation_split (the test set unseen); `distillprune run` "
        "reproduces its numbers.\n# For the final model on all training data: --set data.validation_split=null"
        + (" --set data.limit_train=null" if any(s.startswith("data.limit_train=") for s in setup.fixed) else "")
        + "\n"
    )
    write_text(path, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    if load_recipe(path).model_dump() != setup.recipe(t.params).model_dump():
        raise DistillpruneError(f"{path}: does not load back to trial {t.number}'s recipe")  # a bug, said plainly
    return path
