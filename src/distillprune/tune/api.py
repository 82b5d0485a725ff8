"""``tune``: search a recipe's knobs with Optuna against validation top-1 (and measured speedup).

The study lives in ``<out>/study.db`` (Optuna's RDB storage on SQLite): a killed search resumes with
``resume=True``, several processes may work on one study, and a trial whose process died (its heartbeat
stopped) is retried with the same values in its own run folder, continuing where that run stopped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillprune.core.extras import import_extra
from distillprune.core.io import guard
from distillprune.core.trust import code_trust
from distillprune.errors import DistillpruneError
from distillprune.pipeline.rundir import out_folder, refuse_links
from distillprune.recipes.schema import Recipe, read_yaml
from distillprune.tune.report import TuneReport
from distillprune.tune.results import finish
from distillprune.tune.space import Space, build, check_space, load_space
from distillprune.tune.trial import OBJECTIVES, Setup, is_trial_folder, run_trial

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "nsga2")
PRUNERS = ("halving", "hyperband", "none")
STUDY = "distillprune-tune"
DB = "study.db"
#: what tune writes in its folder (SQLite's side files included): checked for planted links before it starts
TUNE_FILES = (
    DB,
    f"{DB}-journal",
    f"{DB}-wal",
    f"{DB}-shm",
    "trials",
    "plans",
    "best.yaml",
    "tune.json",
    "tune.html",
    "test.json",
)
#: a trial whose process sent no heartbeat for this long is failed, then retried (RetryHeartbeatStaleTrialCallback)
HEARTBEAT_S, GRACE_S = 20, 60


class TuneError(DistillpruneError):
    """Bad options for a search, or a tune folder that cannot hold (or resume) this search."""


def tune(
    recipe: Recipe | str | Path,
    space: Space | str | Path | dict[str, Any],
    *,
    trials: int,
    out: str | Path,
    objectives: tuple[str, ...] | list[str] = ("top1",),
    sampler: str = "tpe",
    pruner: str = "halving",
    budget_fraction: float = 1.0,
    validation_split: float = 0.2,
    resume: bool = False,
    quiet: bool = True,
    trust_code: bool = False,
) -> TuneReport:
    """Run (or continue) a search of ``trials`` finished trials over ``space``; writes ``best.yaml``,
    ``tune.json`` and ``tune.html`` to ``out`` and returns the report.

    ``budget_fraction`` F: each trial trains on a seeded, class-balanced share F of the training samples
    left after the validation split (``data.limit_train``), for the recipe's full epochs (so the pruner
    compares trials at the same epochs). The test set is read only after the search, for the best trials.
    ``trust_code``: as for ``compress`` (checkpoints and Hugging Face folders the recipe names may run the
    code they carry).
    """
    optuna = import_extra("optuna", "tune", "distillprune tune")
    objectives = tuple(objectives)
    _check_options(trials, objectives, sampler, pruner, budget_fraction, validation_split)
    raw, where = _base(recipe)
    base = build(raw, [], where)
    from distillprune.pipeline.run import recipe_code

    with code_trust(trust_code, vouched=recipe_code(base)):  # the trials, and reading their checkpoints after
        if "speedup" in objectives and not base.measure.enabled:
            raise TuneError("the speedup objective needs measured latency; the recipe sets measure.enabled: false")
        space = space if isinstance(space, Space) else load_space(space)
        fixed = _fixed_sets(base, budget_fraction, validation_split)
        check_space(space, raw, fixed, where)  # every drawable value builds a valid recipe, before any trial
        folder = tune_folder(out, resume)
        speed_key = f"ort_bs{base.measure.batch_sizes[0]}"
        setup = Setup(raw, where, space, fixed, objectives, folder / "trials", speed_key, quiet, trust_code)
        identity = {
            "recipe": raw,
            "space": space.to_dict(),
            "objectives": list(objectives),
            "budget_fraction": budget_fraction,
            "validation_split": validation_split,
        }
        study = _open_study(optuna, folder, resume, identity, objectives, sampler, pruner, base.seed)
        _optimize(optuna, study, setup, trials, quiet)
        return finish(study, setup, base, folder, sampler, pruner, identity)


def _check_options(
    trials: int, objectives: tuple[str, ...], sampler: str, pruner: str, budget: float, validation: float
) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials expects a number of trials >= 1; got {trials!r}")
    if not objectives or objectives[0] != "top1" or len(objectives) > 2 or any(o not in OBJECTIVES for o in objectives):
        raise TuneError(f"--objectives expects top1 or top1,speedup; got {','.join(objectives) or 'nothing'}")
    if sampler not in SAMPLERS:
        raise TuneError(f"--sampler expects one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if pruner not in PRUNERS:
        raise TuneError(f"--pruner expects one of {', '.join(PRUNERS)}; got {pruner!r}")
    if sampler == "nsga2" and len(objectives) == 1:
        raise TuneError("--sampler nsga2 searches two objectives: use --objectives top1,speedup (or --sampler tpe)")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and 0 < budget <= 1):
        raise TuneError(f"--budget-fraction expects a share of the training data in (0, 1]; got {budget!r}")
    if not (isinstance(validation, (int, float)) and 0 < validation < 1):
        raise TuneError(f"--validation-split expects a share of the training data in (0, 1); got {validation!r}")


def _base(recipe: Recipe | str | Path) -> tuple[dict[str, Any], str]:
    """The recipe as data (what trials override) and its name for messages."""
    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="json"), recipe.name
    return read_yaml(recipe), str(recipe)


def _fixed_sets(base: Recipe, budget: float, validation: float) -> list[str]:
    """What tune sets on every trial: the validation split in place of the test split, the budget (a share
    of the remaining training samples), the per-epoch validation loss the pruners read."""
    from distillprune.data.sources import load_data

    data = base.data.model_copy(update={"validation_split": validation})
    sets = [f"data.validation_split={validation}", "data.limit_test=null", "runtime.val_loss=true"]
    if budget < 1:
        n_train = len(load_data(data).train)  # after the carve, and after the recipe's own limit_train
        sets.append(f"data.limit_train={max(1, math.ceil(budget * n_train))}")
    return sets


def _open_study(
    optuna: Any,
    folder: Path,
    resume: bool,
    identity: dict[str, Any],
    objectives: tuple[str, ...],
    sampler: str,
    pruner: str,
    seed: int,
) -> optuna.Study:
    db = folder / DB
    with warnings.catch_warnings(), quiet_optuna(optuna):  # heartbeats are "experimental" in Optuna since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{db.resolve()}",
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
            if resume and STUDY not in optuna.study.get_all_study_names(storage):
                raise TuneError(f"--resume: {db} holds no distillprune tune study; it is not a study of this command")
            study = optuna.create_study(
                storage=storage,
                study_name=STUDY,
                directions=["minimize"] if len(objectives) == 1 else ["maximize", "maximize"],
                sampler=_sampler(optuna, sampler, seed),
                pruner=_pruner(optuna, pruner),
                load_if_exists=True,
            )
        except TuneError:
            raise
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors on a damaged or foreign database
            if not resume:
                raise  # a new database in an empty folder: a full disk or the like, as it is
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise TuneError(f"--resume: {db} is not a readable study database ({type(e).__name__}: {why})") from None
    plain = json.loads(json.dumps(identity, default=str))  # as the storage keeps it (JSON)
    stored = study.user_attrs.get("identity")
    if stored is None:  # a new study (or one a process sharing it has just created)
        study.set_user_attr("identity", plain)
    elif not isinstance(stored, dict):
        raise TuneError(f"--resume: {db} records no search setup of this command (its identity is {stored!r:.60})")
    elif stored != plain:
        changed = [k for k in plain if stored.get(k) != plain[k]]
        raise TuneError(f"--resume: the study in {folder} searched another setup ({', '.join(changed)} differ)")
    check_trial_folders(study, db)
    return study


def tune_folder(out: str | Path, resume: bool) -> Path:
    """The tune folder ``--out``, checked: not a link, a new or empty folder (a study to ``--resume``: one
    holding this command's ``study.db``), no link where tune writes; guarded from then on (``core.io``)."""
    folder = out_folder(out)
    if folder.exists() and not folder.is_dir():
        raise TuneError(f"--out {folder} is a file; expected a tune folder")
    db = folder / DB
    if resume:
        if folder.is_dir():
            refuse_links(folder, list(TUNE_FILES), "tune folder")
        if not db.is_file():
            raise TuneError(f"--resume: no study to resume in {folder} (no {DB})")
        with open(db, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise TuneError(f"--resume: {db} is not a study database (not an SQLite file)")
    elif db.exists() or db.is_symlink():
        raise TuneError(f"{folder} already holds a study ({DB}); pass --resume to continue it, or another --out")
    elif folder.is_dir() and any(folder.iterdir()):
        raise TuneError(f"--out {folder} is not empty and holds no study; a tune folder must be new or empty")
    folder.mkdir(parents=True, exist_ok=True)
    guard(folder)
    return folder


def check_trial_folders(study: optuna.Study, db: Path) -> None:
    """Every run folder a stored trial names is a ``trial-NNNN`` folder under ``trials/`` (a study database
    is data: a folder ``../../x`` would put a retried trial's run outside the tune folder)."""
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("folder")
        if name is not None and not is_trial_folder(name):
            raise TuneError(
                f"--resume: {db}: trial {t.number} names its run folder {str(name)!r:.80}; expected trial-NNNN "
                "(a folder under trials/)"
            )


@contextmanager
def quiet_optuna(optuna: Any) -> Iterator[None]:
    """Optuna's INFO lines off while the study opens ("Using an existing study ...")."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _sampler(optuna: Any, name: str, seed: int) -> Any:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=4)


def _pruner(optuna: Any, name: str) -> Any:
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _optimize(optuna: Any, study: optuna.Study, setup: Setup, trials: int, quiet: bool) -> None:
    """Run trials until the study holds ``trials`` finished (complete or pruned) ones; a trial that fails
    on bad input (a diverged loss, a shape the data cannot take) is recorded as failed and the search goes on."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining <= 0:
        return
    verbosity = optuna.logging.get_verbosity()
    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the command's stderr holds only its error line: Optuna's per-trial lines (a failed trial's reason
    # included) go to stdout, like the command's warnings
    optuna.logging.disable_default_handler()
    to_stdout = logging.StreamHandler(sys.stdout)
    optuna.logging.get_logger("optuna").addHandler(to_stdout)
    try:
        study.optimize(
            lambda t: run_trial(setup, t),
            n_trials=remaining,
            catch=(DistillpruneError,),
            callbacks=[MaxTrialsCallback(trials, states=done)],  # other processes count towards it too
        )
    finally:
        optuna.logging.get_logger("optuna").removeHandler(to_stdout)
        optuna.logging.enable_default_handler()
        optuna.logging.set_verbosity(verbosity)
