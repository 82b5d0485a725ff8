"""Trials of one ``tune`` study whose plan-affecting knobs are equal make one plan (``prune.plan_store``): the
first trial plans, the others reuse it; a knob the planner reads (the target's depth options) plans again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import distillprune as dp
from distillprune.tune import tune

pytest.importorskip("optuna")

KD = {"name": "kd", "temperature": 4.0, "alpha": 0.9}
RECIPE = {
    "name": "shared_plans",
    "seed": 0,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}},
    "data": {"source": "digits", "batch_size": 32},
    "runtime": {"threads": 1, "progress": False, "tensorboard": False},
    "measure": {"enabled": False},
    "stages": [
        {
            "type": "prune",
            "target": {"macs_ratio": 1.5, "depth_fractions": [0.0], "val_samples": 64, "calib_samples": 64},
            "width": {"importance": "l2", "round_to": 4},
            "steps": 1,
            "epochs_per_step": 1,
            "optimizer": {"lr": 0.05},
            "distill": {"losses": [KD]},
        }
    ],
}


def plans_of(out: Path) -> list[dict]:
    reports = sorted((out / "trials").glob("trial-*/report.json"))
    stages = [json.loads(p.read_text())["stages"] for p in reports]
    return [next(s for s in st if s["type"] == "prune")["details"]["plan"] for st in stages]


@pytest.mark.slow
def test_two_trials_with_equal_plan_knobs_make_one_plan(tmp_path):
    space = {"stages.0.distill.losses.0.temperature": {"float": [1, 8], "log": True}}  # not read by the planner
    tune(dp.Recipe.model_validate(RECIPE), space, trials=2, out=tmp_path / "out", pruner="none")
    assert len(list((tmp_path / "out" / "plans").glob("*.json"))) == 1
    first, second = plans_of(tmp_path / "out")
    assert not first["reused"] and second["reused"]
    assert (second["blocks"], second["widths"]) == (first["blocks"], first["widths"])


@pytest.mark.slow
def test_a_knob_the_planner_reads_plans_again(tmp_path):
    space = {"stages.0.target.macs_ratio": {"categorical": [1.5, 2.0]}}
    tune(dp.Recipe.model_validate(RECIPE), space, trials=3, out=tmp_path / "out", pruner="none")
    drawn = {p["target"]["macs_ratio"] for p in plans_of(tmp_path / "out")}
    assert len(list((tmp_path / "out" / "plans").glob("*.json"))) == len(drawn)
