"""A killed run continues where it stopped and ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from distillprune.core.checkpoint import load_checkpoint
from distillprune.pipeline import compress
from distillprune.pipeline import state as state_mod
from distillprune.recipes.schema import Recipe

RECIPE = {
    "name": "resume",
    "seed": 3,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [16, 16, 32], "blocks": [2, 1, 1]}},
    "data": {"source": "digits", "limit_train": 256, "limit_test": 100, "batch_size": 64},
    "runtime": {"progress": False, "tensorboard": False},
    "measure": {"enabled": False},
    "stages": [
        {"type": "train", "epochs": 2},
        {"type": "prune", "width": {"ratio": 0.5}, "depth": {"blocks": 1}, "steps": 2, "epochs_per_step": 1},
        {"type": "finetune", "epochs": 3, "optimizer": {"lr": 0.05}},
    ],
}


def _final(run: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_checkpoint(run / "stages" / "03_finetune")
    return model.state_dict()


@pytest.mark.slow
def test_resume_mid_stage_matches_uninterrupted(tmp_path: Path, monkeypatch):
    recipe = Recipe.model_validate(RECIPE)
    full = compress(recipe, tmp_path / "full", quiet=True)

    # interrupt inside the finetune stage, after its first epoch (mid-stage, after a completed stage)
    real_fit = state_mod.fit
    calls = {"n": 0}

    def flaky_fit(*args, **kwargs):
        if kwargs["run"].desc.endswith("finetune"):

            def boom(_model):
                calls["n"] += 1
                if calls["n"] == 6:  # 4 steps an epoch: this is inside the second epoch
                    raise KeyboardInterrupt

            kwargs["run"] = dataclasses.replace(kwargs["run"], on_step=boom)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(state_mod, "fit", flaky_fit)
    with pytest.raises(KeyboardInterrupt):
        compress(recipe, tmp_path / "cut", quiet=True)
    monkeypatch.setattr(state_mod, "fit", real_fit)
    assert not (tmp_path / "cut" / "stages" / "03_finetune" / "model.json").exists()
    assert (tmp_path / "cut" / "stages" / "03_finetune" / "train" / "last.json").exists()

    resumed = compress(recipe, tmp_path / "cut", resume=True, quiet=True)
    assert [s.accuracy for s in resumed.stages] == [s.accuracy for s in full.stages]
    a, b = _final(tmp_path / "full"), _final(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
