"""Every shipped recipe validates; the digits ones run end to end (shortened) on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillprune.pipeline import compress
from distillprune.recipes import BUILTIN, load_recipe

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml")) + sorted(BUILTIN.rglob("*.yaml"))
# Shorten every run: fewer samples and epochs, cheap latency measurement.
FAST = [
    "data.limit_train=300",
    "data.limit_test=100",
    "runtime.progress=false",
    "runtime.tensorboard=false",
    "measure.batch_sizes=[1]",
    "measure.repeats=2",
    "measure.warmup=1",
    "measure.min_window_s=0.005",
]


def test_recipes_are_found():
    assert len(SHIPPED) >= 5, SHIPPED
    assert any(p.name == "digits_demo.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path)
    assert recipe.stages, path


def _shorten(recipe_path: Path) -> list[str]:
    raw = load_recipe(recipe_path)
    sets = list(FAST)
    for i, st in enumerate(raw.stages):
        if hasattr(st, "epochs"):
            sets.append(f"stages.{i}.epochs=1")
        if st.type == "prune" and st.epochs_per_step:
            sets.append(f"stages.{i}.epochs_per_step=1")
        if st.type == "quantize":  # 1-epoch models have near-tied logits: parity is tested on trained ones
            sets.append(f"stages.{i}.min_agreement=0")  # (tests/unit/test_quantize.py, tests/contract)
    return sets


DIGITS = [p for p in SHIPPED if "digits" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("path", DIGITS, ids=lambda p: p.name)
def test_digits_recipe_runs(path: Path, tmp_path: Path):
    recipe = load_recipe(path, _shorten(path))
    report = compress(recipe, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "report.json").exists()
    assert (tmp_path / "run" / "report.md").exists()
    measured = [s for s in report.stages if s.measured]
    # a classifier's top-1; an embedding model (no classifier) is judged by kNN top-1 on the recipe's probe
    quality = "knn_top1" if recipe.model.task == "embedding" else "accuracy"
    assert measured and all(s.quality(quality) is not None and 0 <= s.quality(quality) <= 100 for s in measured)
    if quality == "knn_top1":
        assert recipe.probe is not None and all(s.accuracy is None for s in measured)
    if any(st.type == "export" for st in recipe.stages):
        assert (tmp_path / "run" / "model.onnx").exists()
        exp = next(s for s in report.stages if s.type == "export")
        assert exp.details.max_abs_diff < 1e-3
    if any(st.type == "prune" and (st.width or st.depth) for st in recipe.stages):
        assert report.final.macs < report.baseline.macs
