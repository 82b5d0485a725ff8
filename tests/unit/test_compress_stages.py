"""The lowrank / cluster / quantize stages inside a recipe: rows measure the deployed files, checkpoints
with low-rank history rebuild, a run resumes after a factorized stage, the CLI maps errors to exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.cli import main
from distillprune.core.config import validate
from distillprune.pipeline import execute
from distillprune.recipes.schema import Recipe

FAST = {
    "data": {"source": "digits", "limit_train": 400, "limit_test": 120, "batch_size": 32},
    "runtime": {"device": "cpu", "progress": False, "tensorboard": False},
    "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1, "min_window_s": 0.005},
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
}
STAGES = [
    {"type": "train", "epochs": 2, "optimizer": {"lr": 0.1}},
    {
        "type": "lowrank",
        "rank_by": "ratio",
        "ratio": 0.5,
        "round_to": 4,
        "epochs": 1,
        "optimizer": {"lr": 0.01},
    },
    {"type": "cluster", "k": 16, "epochs": 1, "optimizer": {"lr": 0.001}},
    {"type": "quantize", "method": "static", "min_agreement": 0.0},
    {"type": "quantize", "method": "fp16", "min_agreement": 0.0},
]


def _recipe(stages=STAGES) -> Recipe:
    return validate(Recipe, {"name": "t", **FAST, "stages": stages})


@pytest.mark.slow
def test_rows_measure_the_deployed_files(tmp_path: Path):
    run = tmp_path / "run"
    state = execute(_recipe(), run, quiet=True)
    rows = {s.type + ("" if s.type != "quantize" else s.details.method): s for s in state.report.stages}
    lr, cl, q8, q16 = rows["lowrank"], rows["cluster"], rows["quantizestatic"], rows["quantizefp16"]
    assert lr.details.factorized and lr.macs < rows["train"].macs
    assert cl.artefact.startswith("model.cluster.xz") and cl.onnx_bytes == (run / "model.cluster.xz").stat().st_size
    assert cl.details.ratio > 4 and cl.float_model["onnx_bytes"] > cl.onnx_bytes
    assert q8.artefact == "model.int8.onnx" and q8.onnx_bytes == (run / "model.int8.onnx").stat().st_size
    assert set(q8.latency_ms) == {"ort_bs1"} and 0 <= q8.accuracy <= 100
    assert q16.artefact == "model.fp16.onnx" and q16.latency_ms == {}  # GPU format: no CPU timing
    assert (run / "stages" / "04_quantize" / "calibration.json").exists()
    md = (run / "report.md").read_text()
    assert "[model.int8.onnx]" in md and "size gain" in md
    saved = json.loads((run / "report.json").read_text())
    assert saved["stages"][3]["artefact"] == "model.int8.onnx"
    # the clustered checkpoint rebuilds from its history (lowrank ops) and holds <= 16 values per layer
    model, spec, _ = dp.load_checkpoint(run / "stages" / "03_cluster")
    assert [op.op for op in spec.history].count("lowrank") == len(lr.details.factorized)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(model(x), state.model.cpu().eval()(x), atol=1e-5)
    packed = dp.cluster.load_packed(run / "model.cluster.xz")
    assert all(
        torch.equal(packed[k], v)
        for k, v in dp.load_checkpoint(run / "stages" / "03_cluster")[0].state_dict().items()
        if k in packed
    )


@pytest.mark.slow
def test_resume_after_a_factorized_stage(tmp_path: Path):
    run = tmp_path / "run"
    recipe = _recipe(STAGES[:3])
    execute(recipe, run, quiet=True)
    # as if killed during stage 3: state and report as stage 2 left them
    (run / "state.json").write_text(json.dumps({"completed": 2, "kind": "lowrank"}))
    rep = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**rep, "stages": rep["stages"][:2]}))
    report = dp.compress(recipe, run, resume=True, quiet=True)
    assert [s.type for s in report.stages] == ["train", "lowrank", "cluster"]


@pytest.mark.slow
def test_qat_stage_and_cli_errors(tmp_path: Path):
    qat = {
        "type": "quantize",
        "method": "qat",
        "min_agreement": 0.0,
        "qat": {"epochs": 1, "optimizer": {"lr": 0.01}},
    }
    report = dp.compress(_recipe([STAGES[0], qat]), tmp_path / "run", quiet=True)
    assert report.stages[-1].artefact == "model.int8-qat.onnx"
    assert report.stages[-1].details.reference.startswith("QAT model")
    with pytest.raises(dp.RecipeError, match="qat options given but method is 'static'"):
        _recipe([{"type": "quantize", "method": "static", "qat": {"epochs": 1}}])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ndata: {source: digits, limit_train: 64, limit_test: 32}\n"
        "runtime: {progress: false, tensorboard: false}\nmeasure: {enabled: false}\n"
        "model: {name: mlp, kwargs: {hidden: [16]}}\n"
        "stages:\n  - {type: quantize, method: static, layers: {exclude: [nosuchlayer]}}\n"
    )
    assert main(["run", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert main(["run", str(bad), "--set", "stages.0.method=int4"]) == 2


@pytest.mark.slow
def test_bench_cli(tmp_path: Path, capsys):
    recipe = _recipe([STAGES[0], STAGES[3]])
    dp.compress(recipe, tmp_path / "run", quiet=True)
    dp.export_onnx(
        dp.load_checkpoint(tmp_path / "run" / "stages" / "02_quantize")[0], (1, 8, 8), tmp_path / "fp32.onnx"
    )
    yaml = tmp_path / "r.yaml"
    yaml.write_text(json.dumps(recipe.model_dump(mode="json")))  # JSON is YAML
    assert (
        main(
            [
                "bench",
                str(tmp_path / "fp32.onnx"),
                str(tmp_path / "run" / "model.int8.onnx"),
                "--data",
                str(yaml),
                "--batch-sizes",
                "1",
                "--limit",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| fp32.onnx | fp32 |" in out and "| model.int8.onnx | int8 (QDQ) |" in out
    assert "speedup bs1 vs fp32.onnx" in out and "accuracy on 50 test samples" in out
    assert main(["bench", str(tmp_path / "fp32.onnx"), "--data", str(tmp_path / "x.csv")]) == 2
