"""The whole pipeline on a tiny recipe: train -> prune (depth + width, with KD) -> finetune -> export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from distillprune.core.checkpoint import load_checkpoint
from distillprune.errors import DataError, DistillpruneError
from distillprune.export.onnx import session
from distillprune.pipeline import compress
from distillprune.recipes import Recipe
from distillprune.report import CompressionReport

BASE = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [2, 1, 1]}},
    "data": {"source": "digits", "limit_train": 256, "batch_size": 64},
    "runtime": {"device": "cpu", "progress": False, "tensorboard": False},
    "measure": {"batch_sizes": [1], "warmup": 1, "repeats": 1, "min_window_s": 0.001},
    "stages": [
        {"type": "train", "epochs": 1, "optimizer": {"lr": 0.1}},
        {
            "type": "prune",
            "width": {"ratio": 0.5, "round_to": 4},
            "depth": {"blocks": 1, "calib_samples": 64},
            "steps": 2,
            "epochs_per_step": 1,
            "optimizer": {"lr": 0.05},
            "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
        },
        {"type": "finetune", "epochs": 1, "optimizer": {"lr": 0.05}},
        {"type": "export"},
    ],
}


def recipe(**changes) -> Recipe:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return Recipe.model_validate(raw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    report = compress(recipe(), out, quiet=True)
    return out, report


@pytest.mark.slow
def test_pipeline_writes_reports_and_onnx(run):
    out, report = run
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    assert (out / "model.onnx").is_file()
    assert [s.name for s in report.stages] == ["1:train", "2:prune", "3:finetune", "4:export"]
    loaded = CompressionReport.load(out)
    assert [s.name for s in loaded.stages] == [s.name for s in report.stages]
    assert loaded.stages[1].macs == report.stages[1].macs
    md = (out / "report.md").read_text()
    assert "# distillprune report: tiny" in md and "2:prune" in md
    state = json.loads((out / "state.json").read_text())
    assert state == {"completed": 4, "kind": "export"}


@pytest.mark.slow
def test_pipeline_prune_stage_is_smaller(run):
    out, report = run
    train, prune, finetune, export = report.stages
    assert train.measured and prune.measured and finetune.measured and not export.measured
    assert prune.macs < train.macs and prune.params < train.params
    assert finetune.macs == prune.macs  # fine-tuning does not change the architecture
    assert report.baseline is train and report.final is finetune
    assert report.mac_ratio(prune) > 1.0
    assert 0.0 <= prune.accuracy <= 100.0
    assert "ort_bs1" in prune.latency_ms
    assert len(prune.details.removed_blocks) == 1
    assert prune.details.removed_blocks[0] in ("layer1.0", "layer1.1")
    assert export.details.onnx == "model.onnx" and export.details.top1_agreement == 1.0
    # the pruned architecture is recorded as replayable history
    meta = json.loads((out / "stages" / "02_prune" / "model.json").read_text())
    ops = [op["op"] for op in meta["arch"]["history"]]
    assert ops == ["remove_block", "channels", "channels"]
    assert (out / "teacher" / "model.json").is_file()


@pytest.mark.slow
def test_pipeline_records_widths_and_writes_html(run):
    out, report = run
    train, prune, finetune, _ = report.stages
    removed = prune.details.removed_blocks[0]
    assert f"{removed}.conv1" in train.widths and f"{removed}.conv1" not in prune.widths
    assert prune.widths["conv1"] < train.widths["conv1"] and prune.widths == finetune.widths
    assert train.widths["fc"] == 10 == prune.widths["fc"]  # the classifier keeps its classes
    assert CompressionReport.load(out).stages[1].widths == prune.widths
    html = (out / "report.html").read_text()
    for fig in ("pareto-ort_bs1", "stage-bars", "widths", "curves"):
        assert f'data-figure="{fig}"' in html, fig


@pytest.mark.slow
def test_final_checkpoint_reloads_and_matches_onnx(run):
    out, report = run
    folders = sorted(p.name for p in (out / "stages").iterdir())
    assert folders == ["01_train", "02_prune", "03_finetune", "04_export"]
    model, spec, meta = load_checkpoint(out / "stages" / "04_export")
    assert meta["stage"] == 4 and spec.name == "digits_cnn"
    assert isinstance(model.get_submodule(report.stages[1].details.removed_blocks[0]), torch.nn.Identity)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    got = session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # the export stage saved the fine-tuned weights (same as the finetune stage's checkpoint)
    ft, _, _ = load_checkpoint(out / "stages" / "03_finetune")
    with torch.no_grad():
        assert torch.equal(ft(x), model(x))


@pytest.mark.slow
def test_second_run_into_non_empty_folder_refuses(run):
    out, _ = run
    before = (out / "report.json").read_text()
    with pytest.raises(DistillpruneError, match="already exists and holds a run with .* completed stage"):
        compress(recipe(), out, quiet=True)
    assert (out / "report.json").read_text() == before


@pytest.mark.slow
def test_resume_of_a_finished_run_redoes_nothing(run):
    out, report = run
    again = compress(recipe(), out, resume=True, quiet=True)
    assert [s.name for s in again.stages] == [s.name for s in report.stages]
    assert [s.seconds for s in again.stages] == [s.seconds for s in report.stages]
    with pytest.raises(DistillpruneError, match="no run to resume"):
        compress(recipe(), out.parent / "fresh", resume=True, quiet=True)


def test_label_free_prune_runs(tmp_path):
    r = recipe(
        data={"source": "digits", "limit_train": 128, "batch_size": 64, "labels": False},
        stages=[{"type": "prune", "width": {"ratio": 0.5, "round_to": 4}, "steps": 1, "epochs_per_step": 1}],
    )
    report = compress(r, tmp_path / "lf", quiet=True)
    inp, prune = report.stages
    assert inp.name == "0:input" and report.baseline is inp  # the model as it entered: every speedup's reference
    assert prune.accuracy is not None  # test labels are kept for measuring
    assert prune.details.training.epochs == 1 and np.isfinite(prune.details.training.final_loss)
    assert (tmp_path / "lf" / "stages" / "01_prune" / "model.json").is_file()


def test_train_stage_without_labels_raises(tmp_path):
    r = recipe(data={"source": "digits", "limit_train": 128, "labels": False}, stages=[{"type": "train", "epochs": 1}])
    with pytest.raises(DataError, match="without labels needs a teacher"):
        compress(r, tmp_path / "nl", quiet=True)


def test_compress_without_run_dir_and_with_python_objects(digits_bundle):
    """Python API: any nn.Module and DataBundle, no files written."""
    from unit_helpers import tiny_digits_cnn

    r = recipe(stages=[{"type": "evaluate"}], measure={"enabled": False})
    model = tiny_digits_cnn()
    report = compress(r, None, model=model, data=digits_bundle, quiet=True)
    (ev,) = report.stages
    assert ev.measured and 0.0 <= ev.accuracy <= 100.0 and ev.latency_ms == {}


def test_data_that_does_not_fit_the_model(tmp_path):
    r = recipe(model={"name": "mlp", "kwargs": {"hidden": [8]}}, stages=[{"type": "evaluate"}])
    from distillprune.data.base import DataBundle, Split

    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 8, 8, generator=g)
    bundle = DataBundle(
        Split(x, torch.arange(10) % 3), Split(x, torch.arange(10) % 3), 3, list("abc"), torch.zeros(1), torch.ones(1)
    )
    with pytest.raises(DataError, match="outputs"):
        compress(
            r, None, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)), data=bundle, quiet=True
        )
    with pytest.raises(DataError, match="do not fit"):
        compress(
            r, None, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3)), data=bundle, quiet=True
        )
