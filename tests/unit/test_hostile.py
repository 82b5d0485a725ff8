"""Regression tests of issue 22 (hostile inputs, round two), in process: numbers that are not numbers, data
files that lie, JSON nested too deep, weights full of NaN, run folders that are not ours or are in use,
output names that would overwrite the run's own files, data changed under a resumed run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from distillprune.core.checkpoint import load_checkpoint, read_meta, save_checkpoint
from distillprune.core.io import loads
from distillprune.data import DataConfig, load_data
from distillprune.errors import CheckpointError, DataError, DistillpruneError, RecipeError
from distillprune.models.weights import read_state_dict
from distillprune.pipeline import compress
from distillprune.pipeline.rundir import prepare
from distillprune.pipeline.runlock import release_all
from distillprune.recipes import load_recipe
from distillprune.recipes.schema import Recipe

BASE = """
name: hostile
model: {name: mlp, kwargs: {hidden: [16]}}
data: {source: digits, limit_train: 64, limit_test: 32, batch_size: 32}
runtime: {progress: false, tensorboard: false, threads: 1}
measure: {enabled: false}
stages:
  - {type: train, epochs: 1}
  - type: finetune
    epochs: 1
    distill: {losses: [{name: kd, temperature: 4.0}]}
"""


def _recipe(tmp_path: Path, sets: list[str], text: str = BASE) -> Recipe:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(p, sets)


# ------------------------------------------------------------------------------ numbers that are not numbers
@pytest.mark.parametrize(
    "sets, match",
    [
        (["stages.1.distill.losses.0.temperature=.nan"], "temperature must be a finite number"),
        (["stages.1.distill.losses.0.temperature=.inf"], "temperature must be a finite number"),
        (["stages.1.distill.losses.0.temperature={start: .nan, end: 2}"], "finite number"),
        (["stages.1.distill.losses.0.temperature={start: 4, end: -.inf}"], "finite number"),
        (["stages.1.distill.losses.0.weight=.nan"], "finite number"),
        (["stages.1.distill.losses.0.weight={start: 0, end: .inf}"], "finite number"),
        (["stages.1.distill.losses.0.temperature=true"], "expects a number, got true"),
        (["stages.1.distill.losses.0.weight=true"], "weight expects a number, got true"),
        (["stages.1.distill.losses.0.label_smoothing=5"], r"label_smoothing must be in \[0, 1\)"),
        (["stages.1.distill.teacher_weights=[.nan]"], "finite number"),
        (["stages.1.label_smoothing=5"], "less than 1"),
        (["stages.1.label_smoothing=.nan"], "finite number"),
        (["data.normalize={mean: [0.5], std: [.inf]}"], "finite number"),
        (["data.normalize={mean: [0.5], std: [0]}"], "std must be > 0"),
        (["measure.min_window_s=.inf"], "finite number"),
        (["measure.min_window_s=1e9"], "less than or equal to 60"),
        (["stages.0.epochs=true"], "epochs: expected an integer, got true"),
        (["measure.batch_sizes=[1, true]"], "expected an integer, got true"),
        (["seed=100000000000000000000000000"], "seed: Input should be less than or equal to"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["stages.1.distill.losses=[]"], "losses: List should have at least 1 item"),
    ],
)
def test_numbers_that_are_not_numbers_are_refused(tmp_path, sets, match):
    with pytest.raises(RecipeError, match=match):
        _recipe(tmp_path, sets)


def test_binary_yaml_is_not_text(tmp_path):
    text = BASE.replace("name: hostile", "name: !!binary aGVsbG8=")
    with pytest.raises(RecipeError, match="name: expected text, got binary data"):
        _recipe(tmp_path, [], text)


def test_floats_given_as_ints_and_bools_where_bools_belong_still_validate(tmp_path):
    r = _recipe(tmp_path, ["stages.1.distill.losses.0.temperature=4", "data.augment.hflip=true", "seed=7"])
    assert r.seed == 7 and r.data.augment.hflip is True


# ------------------------------------------------------------------------------------------- data files
def _text_cfg(path: Path) -> DataConfig:
    return DataConfig.model_validate(
        {"source": "text", "path": str(path), "text": {"tokenizer": "unused", "label_column": "label"}}
    )


@pytest.mark.parametrize(
    "name, body, match",
    [
        ("d.jsonl", '{"text": "a b c"}\n["text", "label"]\n', r"d.jsonl:2: a JSON list, expected an object"),
        ("d.jsonl", '{"text": "a b c", "label": 1}\n{"text": "d e f", "label": null}\n', "no 'label' label"),
        ("d.csv", "text,label\na b c,1\nd e f\n", r"d.csv:3: 1 fields, but the header names 2"),
        ("d.csv", "text,label\na b c,1,9\n", r"d.csv:2: 3 fields, but the header names 2"),
        ("d.jsonl", "[" * 20000 + "]" * 20000 + "\n", r"d.jsonl:1: not a JSON line \(nested deeper than"),
    ],
)
def test_text_rows_that_lie(tmp_path, name, body, match):
    from distillprune.data.text import _labels, read_splits

    f = tmp_path / name
    f.write_text(body)
    cfg = _text_cfg(f)
    with pytest.raises(DataError, match=match):
        train, test = read_splits(cfg)
        _labels(train, test, "label")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR declaring ``width`` x ``height``: 33 bytes that claim 196 megapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        _png_header_only(tmp_path / split / "a" / "bomb.png", 14000, 14000)
    with pytest.raises(DataError, match=r"bomb.png: the image declares more pixels than the cap of 89,478,485"):
        load_data(DataConfig(source="imagefolder", path=str(tmp_path)))


# ------------------------------------------------------------------------------------ checkpoints and JSON
def test_json_nested_20000_deep_is_one_decode_error():
    with pytest.raises(json.JSONDecodeError, match="nested deeper than 100 levels"):
        loads('{"a": ' * 20000 + "1" + "}" * 20000)
    assert loads('{"s": "[[[[", "v": [[1]]}') == {"s": "[[[[", "v": [[1]]}  # brackets in strings do not count


def _tiny_checkpoint(folder: Path) -> Path:
    from distillprune.models.build import make_model
    from distillprune.models.config import ModelConfig

    model, spec = make_model(ModelConfig(name="mlp", kwargs={"hidden": [4]}), 3, (1, 2, 2))
    return save_checkpoint(folder, model, spec)


def test_deep_model_json_and_nan_weights_are_checkpoint_errors(tmp_path):
    deep = _tiny_checkpoint(tmp_path / "deep")
    (deep / "model.json").write_text('{"format": "distillprune/1", "arch": ' + "[" * 20000 + "]" * 20000 + "}")
    with pytest.raises(CheckpointError, match="unreadable.*nested deeper"):
        read_meta(deep)
    nan = _tiny_checkpoint(tmp_path / "nan")
    model, _, _ = load_checkpoint(nan)
    save_file({k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}, nan / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: weight '.*' holds \d+ NaN or infinite value"):
        load_checkpoint(nan)


def test_a_weights_file_full_of_nan_is_refused(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.tensor([[1.0, float("inf")]]), "steps": torch.tensor(3)}, f)
    with pytest.raises(CheckpointError, match=r"w.pt: weight 'fc.weight' holds 1 NaN or infinite value\(s\) of 2"):
        read_state_dict(f)


def test_deep_state_and_run_json_are_one_line(tmp_path):
    r = _recipe(tmp_path, [])
    out = tmp_path / "run"
    prepare(out, False, r)
    release_all()
    (out / "state.json").write_text("[" * 20000 + "]" * 20000)
    with pytest.raises(CheckpointError, match="corrupt run state"):
        compress(r, out, resume=True, quiet=True)
    (out / "run.json").write_text('{"recipe": ' + "[" * 20000 + "]" * 20000 + "}")
    with pytest.raises(DistillpruneError, match="corrupt run marker"):
        compress(r, out, resume=True, quiet=True)


# ---------------------------------------------------------------------------------------------- run folders
def test_a_folder_with_our_file_names_but_no_run_json_is_refused_unless_forced(tmp_path):
    out = tmp_path / "mine"
    (out / "stages").mkdir(parents=True)
    (out / "tb").mkdir()
    for name, text in (("state.json", '{"completed": 0, "kind": "x"}'), ("report.md", "# my notes")):
        (out / name).write_text(text)
    (out / "stages" / "keep.txt").write_text("mine")
    with pytest.raises(DistillpruneError, match=r"not a distillprune run folder \(no run.json of ours\).*--force"):
        prepare(out, False, Recipe.model_validate({"stages": [{"type": "evaluate"}]}))
    assert (out / "report.md").read_text() == "# my notes" and (out / "stages" / "keep.txt").exists()
    assert not (out / "run.json").exists() and not (out / "run.lock").exists()
    prepare(out, False, Recipe.model_validate({"stages": [{"type": "evaluate"}]}), force=True)
    release_all()
    assert (out / "run.json").exists() and (out / "stages" / "keep.txt").read_text() == "mine"  # nothing cleared


@pytest.mark.slow  # a second process holds the lock
def test_a_second_run_into_a_locked_folder_says_who_holds_it(tmp_path):
    out = tmp_path / "run"
    r = Recipe.model_validate({"stages": [{"type": "evaluate"}]})
    code = (
        "import sys, time; from pathlib import Path; from distillprune.pipeline.rundir import prepare; "
        "from distillprune.recipes.schema import Recipe; "
        f"prepare(Path({str(out)!r}), False, Recipe.model_validate({{'stages': [{{'type': 'evaluate'}}]}})); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DistillpruneError, match=rf"in use by another run \(pid {holder.pid} on host .+, started"):
            prepare(out, False, r)
    finally:
        holder.kill()
        holder.wait()
    prepare(out, False, r)  # the lock went with its holder
    release_all()


def test_resume_refuses_other_data_at_the_same_path(tmp_path):
    rng = np.random.default_rng(0)

    def write(seed: int) -> None:
        rng = np.random.default_rng(seed)
        np.savez(
            tmp_path / "d.npz",
            x_train=rng.random((64, 1, 4, 4), dtype=np.float32),
            y_train=rng.integers(0, 3, 64),
            x_test=rng.random((16, 1, 4, 4), dtype=np.float32),
            y_test=rng.integers(0, 3, 16),
        )

    write(0)
    del rng
    r = Recipe.model_validate(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "data": {"source": "npz", "path": str(tmp_path / "d.npz"), "batch_size": 32},
            "runtime": {"progress": False, "tensorboard": False, "threads": 1},
            "measure": {"enabled": False},
            "stages": [{"type": "train", "epochs": 1}, {"type": "evaluate"}],
        }
    )
    out = tmp_path / "run"
    prepare(out, False, r)
    release_all()
    assert json.loads((out / "run.json").read_text())["data"]["kind"] == "file"
    os.utime(tmp_path / "d.npz")  # touched, same bytes: still the same data
    prepare(out, True, r)
    release_all()
    write(1)
    with pytest.raises(DistillpruneError, match=r"--resume: the data at .*d.npz is not the data .* started with"):
        compress(r, out, resume=True, quiet=True)


# ------------------------------------------------------------------------------------------ the boundary
def _app(exc: BaseException):
    import typer

    app = typer.Typer()

    @app.command()
    def go() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands: typer then takes the command name
        pass

    return app


@pytest.mark.parametrize(
    "exc, why",
    [
        (OSError(28, "No space left on device"), "disk full"),
        (OSError(27, "File too large"), "file size limit (ulimit -f) reached"),
        (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, ... })"), "disk full"),
    ],
)
def test_a_refused_write_says_no_space_left_on_the_run_device(tmp_path, capfd, exc, why):
    from distillprune.boundary import note_run, run_cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")

    def app(**kw):
        note_run(run, ["distillprune", "run", "r.yaml", "--out", str(run), "--resume"])
        return _app(exc)(**kw)

    assert run_cli(app, ["go"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        f"error: no space left on the device holding {run} ({why}); free space (or raise ulimit -f) and resume "
        f"with: distillprune run r.yaml --out {run} --resume"
    ]


def test_a_deep_report_json_is_one_line(tmp_path):
    from distillprune.report.report import CompressionReport

    (tmp_path / "report.json").write_text("[" * 20000 + "]" * 20000)
    with pytest.raises(DistillpruneError):
        CompressionReport.load(tmp_path)


@pytest.mark.slow  # a subprocess that imports distillprune
def test_ctrl_c_outside_the_command_exits_130_with_one_line():
    """The command's handler once the boundary has returned (the interpreter exiting): 130 and the line."""
    code = (
        "import os, signal, time; from distillprune import _process as p; "
        "signal.signal(signal.SIGINT, p._on_sigint); print('out', flush=True); "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr.splitlines()) == (
        130,
        "out\n",
        ["interrupted before any run folder was written; nothing to resume (run the command again)"],
    )
