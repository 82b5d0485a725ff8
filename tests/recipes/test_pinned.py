"""Pinned numbers (torchtune style): the embedded demo recipe's per-epoch losses and per-stage top-1, params
and MACs, and the Python verb ``prune_`` reproducing the recipe's prune stage exactly.

Tolerances: losses within 2% (relative) of the pinned value, top-1 within 0.6 pp (two of the 360 test
images), params, MACs and the removed blocks exactly. The numbers were recorded with the demo's own
settings (2 torch threads, CPU); a change that moves them is a change of behaviour and must say so. Re-recorded
for issue 31: the prune and finetune stages train in the fine-tune regime (cosine from lr 0.01, BatchNorm
re-normalised, held-out checks keeping the best point) after a least-squares recovery of each cut, where they
trained at one-cycle lr 0.05 from the raw cut (the prune stage's first-epoch loss falls from 4.06 to 0.62;
finetune ends at 98.33% instead of 98.61%, one test image).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.recipes import BUILTIN
from distillprune.train.trainer import evaluate

LOSSES = {
    "1:train": [1.993864, 0.865125, 0.460796, 0.178299, 0.118933, 0.083866, 0.042431, 0.043553, 0.03534, 0.023302],
    "2:prune/step1": [0.621823, 0.383437, 0.359831],
    "2:prune/step2": [1.109155, 0.642957, 0.591065],
    "3:finetune": [1.058777, 0.682834, 0.554223, 0.48137, 0.459731, 0.409839],
}
STAGES = [  # name, top-1, params, MACs
    ("1:train", 98.61, 696042, 6573312),
    ("2:prune", 98.33, 77754, 763520),
    ("3:finetune", 98.33, 77754, 763520),
]


@pytest.mark.slow
def test_demo_recipe_is_pinned(tmp_path: Path):
    recipe = dp.load_recipe(
        BUILTIN / "digits_demo.yaml", ["runtime.progress=false", "runtime.tensorboard=false", "measure.enabled=false"]
    )
    report = dp.compress(recipe, tmp_path / "demo", quiet=True)
    seen: dict[str, list[float]] = {}
    for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        seen.setdefault(rec["tag"], []).append(rec["loss"])
    assert seen.keys() == LOSSES.keys()
    for tag, pinned in LOSSES.items():
        assert seen[tag] == pytest.approx(pinned, rel=0.02), tag
    rows = [(s.name, s.accuracy, s.params, s.macs) for s in report.stages if s.measured]
    for (name, acc, params, macs), (pname, pacc, pparams, pmacs) in zip(rows, STAGES, strict=True):
        assert (name, params, macs) == (pname, pparams, pmacs)
        assert abs(acc - pacc) <= 0.6, f"{name}: top-1 {acc} vs pinned {pacc}"
    assert report.stages[1].details.removed_blocks == ["layer3.1", "layer2.1", "layer1.1"]


RECIPE = {
    "name": "same",
    "seed": 5,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [16, 16, 32], "blocks": [2, 1, 1]}},
    "data": {
        "source": "digits",
        "limit_train": 256,
        "limit_test": 120,
        "batch_size": 64,
        "augment": {"crop_padding": 1},
    },
    "runtime": {"progress": False, "tensorboard": False},
    "measure": {"enabled": False},
    "stages": [
        {"type": "train", "epochs": 2},
        {
            "type": "prune",
            "depth": {"blocks": 1},
            "width": {"ratio": 0.5, "round_to": 4, "importance": "taylor"},
            "steps": 2,
            "epochs_per_step": 1,
            "optimizer": {"lr": 0.05},
            "distill": {"losses": [{"name": "kd", "temperature": 2.0}]},
        },
    ],
}


def test_prune_verb_reproduces_the_recipe_stage(tmp_path: Path):
    recipe = dp.Recipe.model_validate(RECIPE)
    report = dp.compress(recipe, tmp_path / "recipe", quiet=True)
    _, recipe_spec, _ = dp.load_checkpoint(tmp_path / "recipe" / "stages" / "02_prune")

    model, spec, _ = dp.load_checkpoint(tmp_path / "recipe" / "stages" / "01_train")  # the dense model
    data = dp.load_data(recipe.data)
    stage = recipe.stages[1]
    loader = dp.LoaderOptions(recipe.data.batch_size, recipe.seed, crop_padding=1)  # calibration batches
    trained = dp.LoaderOptions(recipe.data.batch_size, recipe.seed + 2, crop_padding=1)  # as the run seeds stage 2
    trainer = dp.fit_trainer(stage, data, dp.Context(loader=trained), desc="prune")
    out = dp.prune_(model, stage, data, trainer=trainer, history=spec, context=dp.Context(loader=loader))
    assert [op.to_dict() for op in spec.history] == [op.to_dict() for op in recipe_spec.history]
    assert out.removed_blocks == report.stages[1].details.removed_blocks
    assert round(evaluate(model, data), 2) == report.stages[1].accuracy
    recipe_model, _, _ = dp.load_checkpoint(tmp_path / "recipe" / "stages" / "02_prune")
    for a, b in zip(model.state_dict().values(), recipe_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
