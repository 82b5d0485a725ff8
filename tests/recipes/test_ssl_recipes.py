"""Label-free compression end to end: a data set with no labels at all (an .npz of images only) runs a whole
self-supervised recipe -- SimCLR teacher, prune while distilling with SEED, BYOL fine-tune, int8, ONNX --
and every row is judged by the probe (kNN, linear) on separate labelled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import distillprune as dp
from distillprune.core.batch import is_embedder
from distillprune.core.config import validate
from distillprune.export.onnx import run_onnx
from distillprune.recipes.schema import Recipe, apply_overrides, read_yaml


def _unlabelled_npz(path: Path) -> Path:
    images = (load_digits().images / 16.0).astype(np.float32)  # the digits, without their targets
    np.savez(path, x_train=images[:1200], x_test=images[1200:1400])
    return path


@pytest.mark.slow
def test_a_data_set_without_labels_runs_a_self_supervised_recipe(tmp_path: Path):
    pack = _unlabelled_npz(tmp_path / "images.npz")
    data = dp.load_data(dp.DataConfig(source="npz", path=str(pack)))
    assert data.train.y is None and data.test.y is None and data.num_classes == 0  # nothing to read
    small = {"widths": [8, 16, 16], "blocks": [1, 1, 1]}
    raw = apply_overrides(
        read_yaml(Path(__file__).resolve().parents[2] / "recipes" / "digits_ssl.yaml"),
        [
            f"model.kwargs={small}",
            "data.source=npz",
            f"data.path={pack}",
            "probe.data={source: digits, limit_train: 400, limit_test: 200}",
            "stages.0.epochs=1",
            "stages.1.steps=1",
            "stages.1.epochs_per_step=0.5",
            "stages.2.epochs=1",
            "stages.2.distill=null",
            "stages.2.ssl={method: byol, hidden: 32, out: 16}",
            "runtime.progress=false",
            "runtime.tensorboard=false",
            "measure.batch_sizes=[1]",
            "measure.repeats=2",
            "measure.warmup=1",
            "measure.min_window_s=0.005",
        ],
    )
    raw["stages"].insert(3, {"type": "quantize", "method": "static", "min_cosine": 0.9})
    recipe = validate(Recipe, raw)
    report = dp.compress(recipe, tmp_path / "run", quiet=True)
    rows = [s for s in report.stages if s.measured]
    assert [s.type for s in rows] == ["train", "prune", "finetune", "quantize"]
    for s in rows:  # no classifier, no top-1: the probe judges every row, the int8 file's included
        assert s.accuracy is None and 0 <= s.metrics["knn_top1"] <= 100 and 0 <= s.metrics["linear_top1"] <= 100
    assert rows[0].metrics["knn_top1"] > 50  # one SimCLR epoch already groups the digits better than chance
    assert rows[1].macs < rows[0].macs and report.quality_key == "knn_top1"
    model, _, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "03_finetune")
    assert is_embedder(model)
    out = run_onnx(tmp_path / "run" / "model.onnx", data.inputs("test", 4))
    assert out.shape == (4, 16)  # the backbone's embedding, as wide as the teacher's; no projection head
    md = (tmp_path / "run" / "report.md").read_text()
    assert "kNN top-1 %" in md and "linear probe top-1 %" in md
