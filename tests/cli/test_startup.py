"""The command answers at once: ``--help``, ``list``, ``report`` and the import of ``distillprune.cli`` load
no torch, ONNX Runtime or onnx (their registries hold names and import paths, the heavy module loads when a
method runs); ``validate`` loads torch (it builds every model on the meta device) but no ONNX library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_env

HEAVY = ("torch", "onnxruntime", "onnx", "torch_pruning", "transformers", "sklearn")
REPO = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; the heavy modules it left imported, and what it printed."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600
    )
    assert out.returncode == 0, out.stderr
    *printed, last = out.stdout.strip().splitlines()
    return {"heavy": json.loads(last), "stdout": "\n".join(printed)}


def _command(*args: str) -> str:
    return f"from distillprune.cli import main\nassert main({list(args)!r}) == 0"


def test_importing_the_cli_imports_no_torch():
    assert _loaded_after("import distillprune.cli")["heavy"] == []


def test_importing_the_package_imports_no_torch():
    assert _loaded_after("import distillprune, distillprune.registries")["heavy"] == []


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "losses"], ["run", "--help"]])
def test_help_and_list_import_no_torch(args):
    got = _loaded_after(_command(*args))
    assert got["heavy"] == [], got


def test_list_names_every_registered_method_without_importing_them():
    """``distillprune list`` prints the declared names: the same as the registries hold once every family is
    imported (a built-in registered but not declared, or declared but not registered, fails here)."""
    light = _loaded_after(_command("list"))
    full = _loaded_after("import distillprune\ndistillprune.compress\n" + _command("list"))
    assert light["heavy"] == [] and "torch" in full["heavy"]
    assert light["stdout"] == full["stdout"] and "stages: cluster, distill" in light["stdout"]


def test_report_renders_without_torch(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "report"))
    from synthetic import write_run

    run = write_run(tmp_path / "r")
    rep = json.loads((run / "report.json").read_text())
    rep["stages"][-1]["details"] = {"kind": "export", "onnx": "model.onnx", "max_abs_diff": 1e-6, "top1_agreement": 1.0}
    (run / "report.json").write_text(json.dumps(rep))
    got = _loaded_after(_command("report", str(run), "--html"))
    assert got["heavy"] == [] and "wrote" in got["stdout"]
    assert (run / "report.html").is_file()
    # without torch the details stay mappings; the page and report.md say the same as from the typed report
    import distillprune.pipeline  # noqa: F401  (the stage kinds: the report loads typed here)
    from distillprune.report import CompressionReport, render_markdown

    typed = CompressionReport.load(run)
    assert type(typed.stages[-1].details).__name__ == "ExportReport"
    assert (run / "report.md").read_text() == render_markdown(typed)


def test_validate_loads_no_onnx_library():
    got = _loaded_after(_command("validate", "recipes/digits_full.yaml"))
    assert not {"onnx", "onnxruntime"} & set(got["heavy"]), got
    assert got["stdout"].startswith("ok: recipes/digits_full.yaml")
