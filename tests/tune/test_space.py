"""Search spaces: bad ones are one-line errors (exit 2 from the CLI) before any trial runs; good ones draw
values that build valid recipes; the validation split and the per-epoch validation loss they rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distillprune.cli import main
from distillprune.recipes import BUILTIN
from distillprune.tune.space import SpaceError, build, check_space, load_space

optuna = pytest.importorskip("optuna")

DEMO = BUILTIN / "digits_demo.yaml"
GOOD = "stages.1.distill.losses.0.temperature: {float: [1, 8], log: true}\n"


@pytest.mark.parametrize(
    ("space", "needles"),
    [
        (
            "stages.1.distill.losses.0.temprature: {float: [1, 8]}\n",
            ["temprature", "did you mean 'temperature'"],
        ),
        ("stages.7.optimizer.lr: {float: [0.01, 0.1]}\n", ["stages.7.optimizer.lr", "not an index of a 4-item list"]),
        ("stages.1.optimizer.lr: {flaot: [0.01, 0.1]}\n", ["unknown distribution 'flaot'", "did you mean 'float'"]),
        ("stages.1.width.ratio: {float: [0.3, 1.5]}\n", ["stages.1.width.ratio = 1.5 (the high end)", "ratio"]),
        ("stages.1.steps: {int: [0, 3]}\n", ["stages.1.steps = 0 (the low end)"]),
        ("stages.1.optimizer.lr: {float: [0, 0.1], log: true}\n", ["log distribution needs low > 0"]),
        ("stages.1.optimizer.lr: {float: [0.1, 0.01]}\n", ["finite low < high"]),
        ("stages.1.steps: {int: [1.5, 3]}\n", ["int expects [low, high] of ints"]),
        ("stages.1.optimizer.lr: {float: [0.01, 0.1], lg: true}\n", ["'lg' is not an option of float"]),
        (
            "stages.1.optimizer.name: {categorical: [sgd, adam]}\n",
            ['stages.1.optimizer.name = "adam" (choice 1)'],
        ),
        ("data.validation_split: {float: [0.1, 0.3]}\n", ["tune sets this itself"]),
        ("[1, 2]\n", ["a non-empty mapping"]),
        ("a: [1\n", ["not valid YAML"]),
    ],
)
def test_bad_space_is_one_line_before_any_trial(tmp_path, capsys, space, needles):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out = tmp_path / "out"
    code = main(["tune", str(DEMO), "--space", str(path), "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    assert not (out / "trials").exists()  # nothing ran


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trials", "0"], "--trials expects"),
        (["--objectives", "speed"], "--objectives expects"),
        (["--sampler", "nsga2"], "--sampler nsga2 searches two objectives"),
        (["--pruner", "median"], "--pruner expects"),
        (["--budget-fraction", "0"], "--budget-fraction expects"),
        (["--resume"], "no study to resume"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, args, needle):
    space = tmp_path / "space.yaml"
    space.write_text(GOOD)
    base = ["tune", str(DEMO), "--space", str(space), "--out", str(tmp_path / "out")]
    code = main([*base, *(args if "--trials" in args else ["--trials", "2", *args])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_every_drawn_value_builds_a_valid_recipe():
    """Categorical choices of any YAML value (a loss list) round-trip through Optuna and build recipes."""
    from distillprune.recipes.schema import read_yaml

    raw = read_yaml(DEMO)
    losses = [[{"name": "kd", "temperature": 4.0}], [{"name": "kd"}, {"name": "dkd"}]]
    space = load_space(
        {
            "stages.1.distill.losses": {"categorical": losses},
            "stages.1.steps": {"int": [1, 3]},
            "stages.1.width.ratio": {"float": [0.3, 0.6], "step": 0.1},
            "stages.2.optimizer.lr": {"float": [0.01, 0.1], "log": True},
        }
    )
    check_space(space, raw, [], "demo")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        values = {p.path: p.suggest(trial) for p in space.params}
        recipe = build(raw, [f"{k}={json.dumps(v)}" for k, v in values.items()], "demo")
        assert [loss.name for loss in recipe.stages[1].distill.losses] in (["kd"], ["kd", "dkd"])
        assert 1 <= recipe.stages[1].steps <= 3 and round(recipe.stages[1].width.ratio * 10, 6) % 1 == 0
        study.tell(trial, 0.0)
    assert yaml.safe_load(yaml.safe_dump(space.to_dict())) == space.to_dict()


def test_space_file_keys_must_be_unique(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + GOOD)
    with pytest.raises(SpaceError, match="duplicate key"):
        load_space(path)


def test_validation_split_is_carved_from_training_data(digits_bundle):
    from distillprune.data import DataConfig, load_data

    carved = load_data(DataConfig(source="digits", validation_split=0.2))
    train, val = carved.train, carved.test
    assert len(train) + len(val) == len(digits_bundle.train) and len(val) == 288
    rows = {tuple(r.tolist()) for r in digits_bundle.train.x.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in val.x.flatten(1))  # every validation sample is a training one
    counts = torch.bincount(val.y, minlength=10)
    assert int(counts.max() - counts.min()) <= 1  # class-balanced
    again = load_data(DataConfig(source="digits", validation_split=0.2))
    assert torch.equal(again.test.x, val.x)  # seeded


def test_val_loss_is_recorded_only_when_asked(tmp_path):
    """runtime.val_loss adds the objective on the held-out split to each epoch and changes nothing else."""
    import distillprune as dp

    def run(flag: bool, folder: Path) -> list[dict]:
        raw = {
            "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}},
            "data": {"source": "digits", "limit_train": 200, "validation_split": 0.2},
            "runtime": {"threads": 1, "progress": False, "tensorboard": False, "val_loss": flag},
            "measure": {"enabled": False},
            "stages": [
                {"type": "train", "epochs": 1},
                {"type": "finetune", "epochs": 1, "distill": {"losses": [{"name": "kd"}]}},
            ],
        }
        dp.compress(dp.Recipe.model_validate(raw), folder, quiet=True)
        return [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]

    plain, asked = run(False, tmp_path / "a"), run(True, tmp_path / "b")
    assert all("val_loss" not in r for r in plain) and all(r["val_loss"] > 0 for r in asked)
    assert [r["loss"] for r in plain] == [r["loss"] for r in asked]  # training did not move


def test_shipped_spaces_fit_their_recipes():
    """Every space under spaces/ names the recipe it searches in its header comment and fits it."""
    from distillprune.recipes.schema import read_yaml

    root = Path(__file__).resolve().parents[2]
    shipped = sorted((root / "spaces").glob("*.yaml"))
    assert shipped
    for path in shipped:
        recipe = next(w for w in path.read_text().split() if w.endswith(".yaml") and "recipes" in w)
        check_space(load_space(path), read_yaml(root / recipe), [], recipe)
