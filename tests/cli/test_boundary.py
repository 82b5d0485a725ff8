"""The CLI's error boundary (``distillprune.boundary``), in this process: usage errors are one line and exit 2,
a bug is one line, exit 1 and a traceback file, Ctrl-C is exit 130 with the command that resumes, warnings
go to stdout so stderr holds only the error line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

import distillprune.pipeline.run as run_mod
from distillprune.cli import main

RECIPE = {
    "name": "boundary",
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "data": {"source": "digits", "limit_train": 64, "limit_test": 32, "batch_size": 32},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False},
    "stages": [{"type": "train", "epochs": 1}, {"type": "evaluate"}],
}


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(RECIPE))
    return p


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "no command given"),
        (["run"], "Missing argument 'RECIPE'"),
        (["run", "r.yaml", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "r.yaml", "--set"], "requires an argument"),
        (["bench", "x.onnx", "--threads", "zero"], "'--threads'"),
        (["bench", "x.onnx", "--threads", "0"], "threads: Input should be greater than 0"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, args, needle):
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and needle.lower() in line.lower(), line
    if needle.startswith(("Missing", "No such")):
        assert f"(see 'distillprune {args[0] if args[0] == 'run' else ''}".rstrip() in line, line


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["run", "--help"]) == 0
    assert capsys.readouterr().err == ""


def test_a_bug_is_one_line_exit_1_and_a_traceback_in_the_run_folder(capsys, monkeypatch, recipe, tmp_path):
    def boom(*_a, **_k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(run_mod, "_measure", boom)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("internal error") and "ZeroDivisionError: a bug" in line
    assert f"full traceback in {out / 'error.log'}" in line
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "in boom" in log


def test_a_bug_before_any_run_folder_goes_to_a_temp_file(capsys, monkeypatch, tmp_path):
    import tempfile

    import distillprune.registries as registries

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(registries, "REGISTRIES", None)  # 'list' will fail with a TypeError
    assert main(["list"]) == 1
    line = one_error_line(capsys.readouterr().err)
    logs = list(tmp_path.glob("distillprune-error-*.log"))
    assert len(logs) == 1 and f"full traceback in {logs[0]}" in line
    assert "Traceback" in logs[0].read_text()


def test_ctrl_c_is_130_with_the_command_that_resumes(capsys, monkeypatch, recipe, tmp_path):
    real = run_mod._measure
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first stage completed
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "_measure", interrupted)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--set", "seed=3", "--out", str(out)]) == 130
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("interrupted") and "error" not in line
    assert line.endswith(f"resume with: distillprune run {recipe} --set seed=3 --out {out} --resume")
    monkeypatch.setattr(run_mod, "_measure", real)
    assert main(["run", str(recipe), "--set", "seed=3", "--out", str(out), "--resume"]) == 0
    assert "done 2:evaluate" in capsys.readouterr().out


def test_warnings_go_to_stdout_as_one_line(capsys, monkeypatch, recipe, tmp_path):
    real = run_mod._measure

    def warn_then_fail(*a, **k):
        warnings.warn("something odd\nover two lines", UserWarning, stacklevel=1)
        raise run_mod.DistillpruneError("bad input")

    monkeypatch.setattr(run_mod, "_measure", warn_then_fail)
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == "error: bad input"
    assert "warning: something odd over two lines" in captured.out
    monkeypatch.setattr(run_mod, "_measure", real)


def test_file_system_refusals_are_exit_2(capsys, monkeypatch, recipe, tmp_path):
    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(run_mod, "_measure", refuse)
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {tmp_path / 'x'}: Permission denied"


def test_default_run_folder_stays_under_runs(capsys, monkeypatch, tmp_path):
    from distillprune.cli import _default_out

    for name in ("../../etc/x", "/abs", "..", "a b/c"):
        p = _default_out(name)
        assert p.parent == Path("runs") and ".." not in p.parts and "/" not in p.name, p
