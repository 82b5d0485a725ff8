"""``distillprune tune`` end to end on digits with tiny budgets: a small space runs, best.yaml reproduces its
trial, a study resumes, the pruner stops trials through the real training loop, and no test-set number
reaches a trial."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import distillprune as dp
from distillprune.tune import TuneError, tune

optuna = pytest.importorskip("optuna")

RECIPE = {
    "name": "tiny_tune",
    "seed": 0,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}},
    "data": {"source": "digits", "batch_size": 32},
    "runtime": {"threads": 1, "progress": False, "tensorboard": False},
    "measure": {"enabled": False},
    "stages": [
        {"type": "train", "epochs": 3, "optimizer": {"lr": 0.2}},
        {
            "type": "prune",
            "width": {"ratio": 0.3, "importance": "l2", "round_to": 4},
            "steps": 1,
            "epochs_per_step": 2,
            "optimizer": {"lr": 0.05},
            "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
        },
    ],
}
SPACE = {
    "stages.1.distill.losses.0.temperature": {"float": [1, 8], "log": True},
    "stages.1.optimizer.lr": {"float": [0.01, 0.2], "log": True},
}


def write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search of 3 trials, shared by the tests that read its outputs."""
    root = tmp_path_factory.mktemp("tune")
    recipe = write(root / "recipe.yaml", RECIPE)
    rep = tune(recipe, SPACE, trials=3, out=root / "out", budget_fraction=0.4)
    return root, rep


def test_tiny_space_runs_and_writes_its_outputs(searched):
    root, rep = searched
    out = root / "out"
    assert len(rep.trials) == 3 and rep.chosen is not None
    assert {p.name for p in out.iterdir()} >= {"study.db", "trials", "best.yaml", "tune.json", "tune.html"}
    saved = json.loads((out / "tune.json").read_text())
    assert [t["number"] for t in saved["trials"]] == [0, 1, 2]
    chosen = rep.trial(rep.chosen)
    complete = [t for t in rep.trials if t.state == "COMPLETE"]
    assert chosen.val_top1 == max(t.val_top1 for t in complete)  # one objective: the best validation top-1
    assert all(len(t.curve) >= 1 for t in rep.trials)  # per-epoch validation values reached every trial
    for t in rep.trials:  # each trial an ordinary run folder, with the drawn values in its recipe
        run = json.loads((out / "trials" / t.folder / "run.json").read_text())
        assert run["recipe"]["stages"][1]["optimizer"]["lr"] == pytest.approx(t.params["stages.1.optimizer.lr"])
    html = (out / "tune.html").read_text()
    assert 'src="' not in html and 'href="http' not in html and "@import" not in html  # self-contained
    assert 'data-figure="tune-curves"' in html and "Hold-out" in html


def test_budget_fraction_is_a_share_of_the_training_samples(searched):
    root, rep = searched
    run = json.loads((root / "out" / "trials" / "trial-0000" / "run.json").read_text())
    n_after_carve = 1437 - int(np.ceil(0.2 * 1437))  # digits: 1437 training samples, 20% carved for validation
    assert run["recipe"]["data"]["limit_train"] == int(np.ceil(0.4 * n_after_carve))
    assert run["recipe"]["data"]["validation_split"] == 0.2


def test_best_yaml_reproduces_its_trial(searched, tmp_path):
    root, rep = searched
    recipe = dp.load_recipe(root / "out" / "best.yaml")  # validated through the strict schema
    report = dp.compress(recipe, tmp_path / "again", quiet=True)
    assert report.final.accuracy == rep.trial(rep.chosen).val_top1


def test_test_set_is_read_for_the_best_trial_only(searched):
    root, rep = searched
    assert rep.best == [rep.chosen]
    assert rep.trial(rep.chosen).test_top1 is not None
    assert all(t.test_top1 is None for t in rep.trials if t.number != rep.chosen)
    assert json.loads((root / "out" / "test.json").read_text()).keys() == {str(rep.chosen)}


def test_resume_continues_a_killed_study(tmp_path):
    recipe = write(tmp_path / "recipe.yaml", RECIPE)
    out = tmp_path / "out"
    first = tune(recipe, SPACE, trials=2, out=out, budget_fraction=0.2, pruner="none")
    with pytest.raises(TuneError, match="already holds a study"):
        tune(recipe, SPACE, trials=4, out=out, budget_fraction=0.2, pruner="none")
    with pytest.raises(TuneError, match="space differ"):
        tune(recipe, {**SPACE, "stages.0.epochs": {"int": [1, 2]}}, trials=4, out=out, budget_fraction=0.2, resume=True)
    again = tune(recipe, SPACE, trials=4, out=out, budget_fraction=0.2, pruner="none", resume=True)
    assert len(again.trials) == 4 and [t.params for t in again.trials[:2]] == [t.params for t in first.trials]
    study = optuna.load_study(study_name="distillprune-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-{i:04d}" for i in range(4)]


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_the_pruner_stops_a_trial_inside_training(tmp_path):
    """The per-epoch record reaches the trial while it trains; a pruner's verdict stops the run there. The
    teacher's epochs (stage 1, which the space does not touch: the same in every trial) are not judged."""
    from distillprune.tune.space import load_space
    from distillprune.tune.trial import Setup, run_trial

    setup = Setup(RECIPE, "recipe", load_space(SPACE), ["data.validation_split=0.2", "runtime.val_loss=true"],
                  ("top1",), tmp_path / "trials", "ort_bs1")  # fmt: skip
    study = optuna.create_study(pruner=AlwaysPrune())
    study.optimize(lambda t: run_trial(setup, t), n_trials=1)
    t = study.trials[0]
    assert t.state.name == "PRUNED" and t.user_attrs["pruned_at"] == "2:prune/step1 epoch 1"
    assert list(t.intermediate_values) == [3]  # after the 3 teacher epochs, the first epoch of the prune stage
    lines = [json.loads(ln) for ln in (tmp_path / "trials" / "trial-0000" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in lines] == ["1:train"] * 3 + ["2:prune/step1"] and all("val_loss" in r for r in lines)


def _npz(path: Path, shift: int) -> Path:
    """Digits with the same training split; the test split's labels shifted by ``shift`` (mod 10)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255 / 16)).astype(np.uint8)[:, None]
    y = d.target
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_test=x[1200:], y_test=(y[1200:] + shift) % 10)
    return path


def test_no_test_set_number_influences_a_trial(tmp_path):
    """Two data sets with the same training split and different test splits: every trial draws the same
    values and measures the same numbers; only the best trial's test top-1 (read after the search) differs."""
    reports = []
    for shift in (0, 1):
        data = {"source": "npz", "path": str(_npz(tmp_path / f"d{shift}.npz", shift)), "batch_size": 32}
        recipe = write(tmp_path / f"r{shift}.yaml", {**RECIPE, "data": data})
        reports.append(tune(recipe, SPACE, trials=2, out=tmp_path / f"out{shift}", budget_fraction=0.2))
    a, b = reports
    seen = [[(t.params, t.val_top1, t.curve, t.state) for t in r.trials] for r in (a, b)]
    assert seen[0] == seen[1]
    assert a.trial(a.chosen).test_top1 != b.trial(b.chosen).test_top1


def test_a_killed_trial_is_retried_in_its_own_folder(tmp_path, monkeypatch):
    """A trial whose process died (its heartbeat stopped) is failed and retried with the same values, in
    the same run folder, when the search resumes."""
    from distillprune.tune import api

    monkeypatch.setattr(api, "HEARTBEAT_S", 1)
    monkeypatch.setattr(api, "GRACE_S", 1)
    recipe = write(tmp_path / "recipe.yaml", RECIPE)
    out = tmp_path / "out"
    tune(recipe, SPACE, trials=1, out=out, budget_fraction=0.2, pruner="none")
    study = optuna.load_study(study_name=api.STUDY, storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask()  # a second trial that starts, beats once, and dies
    params = {p: killed.suggest_float(p, *d["float"], log=d.get("log", False)) for p, d in SPACE.items()}
    killed.set_user_attr("folder", "trial-0001")
    study._storage.record_heartbeat(killed._trial_id)
    (out / "trials" / "trial-0001").mkdir()
    time.sleep(2.5)
    rep = tune(recipe, SPACE, trials=2, out=out, budget_fraction=0.2, pruner="none", resume=True)
    states = {t.number: t.state for t in rep.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    retry = rep.trial(2)
    assert retry.params == pytest.approx(params) and retry.folder == "trial-0001"
    assert (out / "trials" / "trial-0001" / "report.json").is_file()
    # the test set is read for the best trial in its own folder, the retried one's too (it was missed when
    # the retry won: its number says trial-0002, its run is trial-0001)
    assert rep.chosen is not None and rep.trial(rep.chosen).test_top1 is not None
