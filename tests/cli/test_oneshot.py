"""One-line verbs for one-step jobs: ``distillprune export SRC OUT.onnx`` and ``distillprune quantize SRC OUT.onnx
--data D`` build the recipe (printed before it runs), run it, and write OUT; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from distillprune.cli import main
from distillprune.export.onnx import run_onnx, session

TINY = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
    "data": {"source": "digits", "limit_train": 128, "limit_test": 64, "batch_size": 64},
    "runtime": {"progress": False, "tensorboard": False},
    "measure": {"enabled": False},
    "stages": [{"type": "train", "epochs": 1}, {"type": "export"}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oneshot")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["run", str(root / "tiny.yaml"), "--out", str(root / "run")]) == 0
    return root


def _said(capsys) -> tuple[dict, list[str]]:
    out = capsys.readouterr().out.splitlines()
    start = out.index(next(ln for ln in out if ln.startswith("running this recipe")))
    block = [ln[2:] for ln in out[start + 1 :] if ln.startswith("  ") or ln.startswith("  -")]
    return yaml.safe_load("\n".join(block)), out


@pytest.mark.slow
@pytest.mark.parametrize("source", ["run", "run/stages/02_export", "run/model.onnx"])
def test_export_of_a_run_a_checkpoint_or_the_onnx_a_run_wrote(run, capsys, source, tmp_path):
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", str(run / source), str(out)]) == 0
    recipe, lines = _said(capsys)
    assert recipe["model"] == {"checkpoint": str(run / "run" / "stages" / "02_export")}
    assert recipe["data"] == {"source": "digits", "limit_train": 128, "limit_test": 64}  # (batch_size 64: default)
    assert recipe["stages"] == [{"type": "export", "filename": "model.onnx"}]
    assert lines[-1].startswith(f"wrote {out}  (parity with torch: max abs diff")
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert np.allclose(run_onnx(out, x), run_onnx(run / "run" / "model.onnx", x), atol=1e-5)


@pytest.mark.slow
def test_quantize_with_data_from_a_recipe(run, capsys, tmp_path):
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(run / "run"), str(out), "--data", str(run / "tiny.yaml")]) == 0
    recipe, lines = _said(capsys)
    assert recipe["stages"] == [{"type": "quantize", "filename": "model.quantized.onnx", "method": "static"}]
    assert "static: model.quantized.onnx" in lines[-1] and "agreement with the float model" in lines[-1]
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and session(out) is not None


@pytest.mark.slow
def test_export_of_a_hugging_face_folder_with_text_data(tmp_path, capsys):
    pytest.importorskip("transformers")
    from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment

    bert = tiny_bert_folder(tmp_path / "bert", layers=2, num_labels=2)
    data = tiny_sentiment(tmp_path / "data", 48, 16)
    assert main(["export", str(bert), str(tmp_path / "b.onnx"), "--data", str(data)]) == 0
    recipe, _ = _said(capsys)
    assert recipe["model"] == {"source": "hf", "path": str(bert), "task": "sequence-classification"}
    assert recipe["data"] == {"source": "text", "path": str(data)}
    assert [i.name for i in session(tmp_path / "b.onnx").get_inputs()][:2] == ["input_ids", "attention_mask"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "exists.onnx").write_bytes(b"keep me")
    (tmp_path / "foreign.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    cases = [
        (["export", str(tmp_path / "nope"), str(tmp_path / "a.onnx")], "no such file or folder"),
        (["export", str(tmp_path), str(tmp_path / "a.onnx")], "expected a run folder"),
        (["export", str(tmp_path / "foreign.onnx"), str(tmp_path / "a.onnx")], "not an ONNX file a distillprune run"),
        (["export", str(tmp_path / "bert"), str(tmp_path / "exists.onnx")], "exists; pass --force"),
        (["export", str(tmp_path / "bert"), str(tmp_path / "a.txt")], "the output is an ONNX file"),
        (["export", str(tmp_path / "bert"), str(tmp_path / "a.onnx")], "--data is needed"),
        (["quantize", str(tmp_path / "bert"), str(tmp_path / "a.onnx"), "--method", "qat"], "--method qat trains"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        line = _error(capsys)
        assert line.startswith("error: ") and message in line, (args, line)
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep me" and not (tmp_path / "a.onnx").exists()
