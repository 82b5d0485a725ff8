"""Regression tests of issue 22 (hostile inputs, round two) through the command: output names that would
overwrite the run's own files, ``--force``, user model code that raises, ONNX files bench cannot use, and
(in subprocesses, the real process) a file size limit mid-run, Ctrl-C while starting, a closed stdout, a
pipe closed early, and an environment that made the command print warnings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import SRC

from distillprune.cli import main

TINY = {
    "name": "hostile",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "limit_train": 64, "limit_test": 32, "batch_size": 32},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False},
    "stages": [{"type": "train", "epochs": 1}],
}


def _recipe(tmp_path: Path, **changes) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**TINY, **changes}))
    return p


def _one_error(capfd, match: str) -> str:
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------------------ names of the run's own files
@pytest.mark.parametrize(
    "stages, match",
    [
        ([{"type": "export", "filename": "run.log"}], "'run.log' would overwrite the run's own files"),
        ([{"type": "export", "filename": "baseline.onnx"}], "'baseline.onnx' would overwrite"),
        ([{"type": "export", "filename": "run.lock"}], "'run.lock' would overwrite"),
        (
            [{"type": "quantize", "method": "dynamic"}, {"type": "quantize", "method": "dynamic"}],
            "stages.2.filename: 'model.int8-dynamic.onnx' (the default) is already written by stages.1 (quantize)",
        ),
        (
            [{"type": "export"}, {"type": "export", "filename": "./model.onnx"}],
            "'./model.onnx' is already written by stages.1 (export)",
        ),
    ],
)
def test_output_names_of_the_runs_own_files_or_an_earlier_stage_are_refused(tmp_path, capfd, stages, match):
    r = _recipe(tmp_path, stages=[{"type": "train", "epochs": 1}, *stages])
    assert main(["validate", str(r)]) == 2
    _one_error(capfd, match)


def test_zoo_kwargs_cannot_contradict_the_data(tmp_path, capfd):
    stages = [{"type": "train", "epochs": 1}, {"type": "distill", "epochs": 1, "student": {"name": "mlp"}}]
    r = _recipe(tmp_path, stages=stages)
    assert main(["validate", str(r), "--set", "stages.1.student.kwargs.num_classes=5"]) == 2
    _one_error(capfd, "stages.1.student: kwargs.num_classes: set from the data")


def test_compare_out_never_overwrites_a_runs_file(tmp_path, capfd):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["run", str(_recipe(tmp_path)), "--out", str(out)]) == 0
        runs.append(out)
    before = (runs[0] / "report.json").read_bytes()
    capfd.readouterr()
    for target in (runs[0] / "report.json", runs[0] / "run.log", runs[1] / "stages" / "x.html"):
        assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(target)]) == 2
        _one_error(capfd, f"would overwrite {target.relative_to(target.parents[0 if target.parent in runs else 1])}")
    assert (runs[0] / "report.json").read_bytes() == before
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(runs[0] / "compare.html")]) == 0


def test_force_writes_into_a_users_folder(tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = _recipe(tmp_path)
    assert main(["run", str(r), "--out", str(out)]) == 2
    _one_error(capfd, "pass --force to write into it")
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert main(["run", str(r), "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "state.json").is_file()


# ---------------------------------------------------------------------------------------- the user's code
USER_NET = """\
from torch import nn


class InitRaises(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        raise KeyError("no such layer")


class TrainRaises(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        assert not self.training, "my forward is broken in training mode"
        return self.fc(x.flatten(1))
"""


@pytest.mark.parametrize(
    "cls, match",
    [
        ("InitRaises", "your code raised KeyError: 'no such layer' at {f}:7 (in __init__); full traceback in"),
        (
            "TrainRaises",
            "your code raised AssertionError: my forward is broken in training mode at {f}:16 (in forward)",
        ),
    ],
)
def test_user_code_that_raises_is_exit_2_naming_its_line(tmp_path, capfd, cls, match):
    net = tmp_path / "user_net.py"
    net.write_text(USER_NET)
    r = _recipe(tmp_path, model={"python": f"{net}:{cls}"})
    out = tmp_path / "run"
    assert main(["run", str(r), "--out", str(out)]) == 2
    line = _one_error(capfd, match.format(f=net))
    log = Path(line.rsplit("full traceback in ", 1)[1])
    assert "Traceback" in log.read_text() and str(net) in log.read_text()


# ------------------------------------------------------------------------------------------- ONNX files
def _onnx(path: Path, inputs: list[tuple[str, list]], out_shape: list) -> Path:
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)
    nodes = [helper.make_node("Identity", [inputs[0][0]], ["out"])] if inputs else []
    init = [] if inputs else [helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])]
    if not inputs:
        nodes = [helper.make_node("Identity", ["w"], ["out"])]
    graph = helper.make_graph(nodes, "g", ins, [out], initializer=init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _npz(path: Path, shape: tuple[int, ...]) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.random((8, *shape), dtype=np.float32),
        y_train=rng.integers(0, 4, 8),
        x_test=rng.random((8, *shape), dtype=np.float32),
        y_test=np.arange(8) % 4,
    )
    return path


def test_bench_refuses_onnx_files_it_cannot_use(tmp_path, capfd):
    fast = ["--batch-sizes", "1"]
    none = _onnx(tmp_path / "none.onnx", [], [1])
    assert main(["bench", str(none), *fast]) == 2
    _one_error(capfd, "none.onnx: the ONNX graph has no inputs")
    four = _onnx(tmp_path / "four.onnx", [("input", ["n", 4])], ["n", 4, 1, 1])
    data = _npz(tmp_path / "d.npz", (4,))
    assert main(["bench", str(four), "--data", str(data), *fast]) == 2
    _one_error(capfd, "four.onnx: its first output has 4 dimensions; top-1 accuracy needs (batch, classes)")
    huge = _onnx(tmp_path / "huge.onnx", [("input", ["n", 10**6, 10**6])], ["n", 10**6, 10**6])
    assert main(["bench", str(huge), *fast]) == 2
    _one_error(capfd, "huge.onnx: a batch of 1 inputs of shape (1000000, 1000000) needs")
    ok = _onnx(tmp_path / "ok.onnx", [("input", ["n", 4])], ["n", 4])
    assert main(["bench", str(ok), "--batch-sizes", str(10**11)]) == 2
    _one_error(capfd, "a batch of 100000000000 inputs of shape (4,) needs")
    named = _onnx(tmp_path / "named.onnx", [("pixels", ["n", 4])], ["n", 4])  # not called 'input'
    assert main(["bench", str(named), "--data", str(data), *fast]) == 0
    assert "| named.onnx | fp32 |" in capfd.readouterr().out


# ---------------------------------------------------------------------------------- the real process
def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": SRC + (os.pathsep + path if path else ""), **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distillprune.cli", *args]


def _limit_files() -> None:
    """``ulimit -f 100``: files over 100 KiB cannot be written (the 512-wide model's checkpoint is bigger)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))


@pytest.mark.slow
def test_a_file_size_limit_mid_run_is_one_line_and_the_run_resumes_to_the_same_files(tmp_path):
    big = _recipe(tmp_path, model={"name": "mlp", "kwargs": {"hidden": [512]}}, stages=[TINY["stages"][0]])
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    p = subprocess.run(
        _cli("run", str(big), "--out", str(cut)), capture_output=True, text=True, env=_env(), preexec_fn=_limit_files
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"error: no space left on the device holding {cut} (file size limit"), p.stderr
    assert len(p.stderr.splitlines()) == 1 and "--resume" in p.stderr
    for out, extra in ((cut, ["--resume"]), (whole, [])):
        done = subprocess.run(_cli("run", str(big), "--out", str(out), *extra), capture_output=True, env=_env())
        assert done.returncode == 0, done.stderr
    name = "stages/01_train/model.safetensors"
    assert (cut / name).read_bytes() == (whole / name).read_bytes()


@pytest.mark.slow
def test_streams_signals_and_environment_of_the_real_process(tmp_path):
    # Ctrl-C while torch is still importing: 130 and the one line, not a traceback and death by SIGINT
    # (`validate` imports torch; `list` no longer does and may end before the signal)
    demo = Path(__file__).resolve().parents[2] / "src" / "distillprune" / "recipes" / "builtin" / "digits_demo.yaml"
    p = subprocess.Popen(
        _cli("validate", str(demo)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.4)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.splitlines() == [
        "interrupted before any run folder was written; nothing to resume (run the command again)"
    ], (p.returncode, err)
    # stdout closed (>&-) and a reader that stops after one byte: quiet, no traceback
    shell = f"{' '.join(_cli('list'))} >&- ; echo rc=$? >&2; {' '.join(_cli('list'))} | head -c1 >/dev/null"
    piped = subprocess.run(
        ["bash", "-c", shell + "; echo rc=${PIPESTATUS[0]} >&2"], capture_output=True, text=True, env=_env()
    )
    codes = piped.stderr.split()
    assert codes[0] == "rc=0" and codes[1] in ("rc=0", "rc=141") and len(codes) == 2, piped.stderr
    # a bad OMP_NUM_THREADS and a HOME that cannot be written: a successful run prints no warning anywhere
    r = _recipe(tmp_path, measure={"batch_sizes": [1], "repeats": 1, "warmup": 0, "min_window_s": 0.001, "pairs": 1})
    for omp in ("0", "abc"):
        run = subprocess.run(
            _cli("run", str(r), "--out", str(tmp_path / f"run{omp}")),
            capture_output=True,
            text=True,
            env=_env(OMP_NUM_THREADS=omp, HOME="/dev/null", XDG_CACHE_HOME="", MPLCONFIGDIR=""),
        )
        assert run.returncode == 0 and run.stderr == "", run.stderr
        assert "warning" not in run.stdout.lower(), run.stdout
