"""`distillprune compare`, `distillprune report --html`, the compact/wide console table, environment()."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rich.console import Console
from synthetic import synthetic_report, write_run

from distillprune.cli import main
from distillprune.errors import DistillpruneError
from distillprune.report import print_table
from distillprune.report.compare import COLUMNS as COMPARE_COLUMNS
from distillprune.report.compare import (
    compare_rows,
    environment_differences,
    latency_notes,
    load_runs,
    print_compare,
    recipe_differences,
    write_compare,
)
from distillprune.report.render import COLUMNS, render_markdown
from distillprune.report.report import cpu_info, environment


@pytest.fixture()
def two_runs(tmp_path):
    return write_run(tmp_path / "runs" / "a", "recipe_a"), write_run(tmp_path / "runs" / "b", "recipe_b", faster=1.5)


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_compare_writes_page_and_table(two_runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp.html"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    html = out.read_text()
    assert 'data-figure="compare-ort_bs1"' in html and 'data-figure="compare-ort_bs32"' in html
    assert "recipe_a" in html and "recipe_b" in html and "measured differently" not in html.lower()
    stdout = capsys.readouterr().out
    assert "real/MAC" in stdout and "dense top-1" not in stdout  # the compact table; --wide has the rest
    assert stdout.rstrip().endswith(f"wrote {out}")
    monkeypatch.setenv("COLUMNS", "250")  # rich sizes the table to the terminal: make it a wide one
    assert main(["compare", *map(str, two_runs), "--out", str(out), "--wide"]) == 0
    assert "dense top-1" in capsys.readouterr().out


def test_compare_rows_final_against_own_dense(two_runs):
    rows = [dict(zip(COMPARE_COLUMNS, r, strict=True)) for r in compare_rows(load_runs(two_runs))]
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0]["stages"] == "5" and rows[0]["dense top-1 %"] == "97.50" and rows[0]["final top-1 %"] == "97.20"
    assert rows[1]["speedup bs1"] == f"{0.300 / (0.140 / 1.5):.2f}x"
    assert rows[1]["final top-1 %"] == "96.20"


def test_compare_flags_runs_measured_differently(two_runs):
    a, b = two_runs
    rep = json.loads((b / "report.json").read_text())
    rep["environment"]["ort_threads"] = 4
    (b / "report.json").write_text(json.dumps(rep))
    diffs = environment_differences(load_runs(two_runs))
    assert diffs == ["ort_threads: 1 (a) vs 4 (b)"]
    console = Console(width=100, record=True)
    print_compare(load_runs(two_runs), console=console)
    assert "measured differently" in console.export_text()


def test_compare_same_folder_names_get_parent_prefix(tmp_path):
    a = write_run(tmp_path / "x" / "run", "r1")
    b = write_run(tmp_path / "y" / "run", "r2")
    assert [r.label for r in load_runs([a, b])] == ["x/run", "y/run"]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no such run folder"),
        ("not_run", "not a run folder"),
        ("one", "two or more"),
        ("twice", "given twice"),
    ],
)
def test_compare_bad_input_is_one_line_exit_2(case, needle, two_runs, tmp_path, capsys):
    a, b = two_runs
    (tmp_path / "empty").mkdir()
    args = {
        "missing": [a, tmp_path / "nope"],
        "not_run": [a, tmp_path / "empty"],
        "one": [a],
        "twice": [a, b, a / "report.json"],
    }[case]
    assert main(["compare", *map(str, args), "--out", str(tmp_path / "c.html")]) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "c.html").exists()


def test_compare_bad_input_subprocess_has_no_traceback(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "distillprune.cli", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "no such run folder" in res.stderr


def test_report_html_from_cli(tmp_path, capsys):
    run = write_run(tmp_path / "r")
    assert main(["report", str(run), "--html"]) == 0
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in one_error_line(capsys)


def test_report_without_html_flag_writes_only_markdown(tmp_path):
    run = write_run(tmp_path / "r")
    assert main(["report", str(run / "report.json")]) == 0
    assert (run / "report.md").is_file() and not (run / "report.html").exists()


def _table(wide: bool, width: int) -> list[str]:
    console = Console(width=width, record=True)
    print_table(synthetic_report(), wide=wide, console=console)
    return console.export_text().splitlines()


def test_compact_table_fits_80_columns():
    lines = _table(False, 80)
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    for header in ("stage", "top-1", "Δ pp", "params", "MACs", "bs1 ms", "speedup", "real/MAC"):
        assert header in text
    assert "file size" not in text and "97.20" in text and "2.14x" in text


def test_wide_table_has_every_column():
    text = "\n".join(_table(True, 250))
    for c in COLUMNS:
        assert c in text, c


def test_markdown_keeps_every_column():
    md = render_markdown(synthetic_report())
    assert "| " + " | ".join(COLUMNS) + " |" in md


def test_cpu_info_reads_model_and_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: other\n"
    )
    info = cpu_info(f)
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["cpu_flags"] == [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]
    assert cpu_info(tmp_path / "none") == {}


def test_environment_names_libraries():
    env = environment()
    for key in ("torch", "onnxruntime", "onnx", "torch_pruning", "numpy", "distillprune", "cpu_count"):
        assert key in env, key


def test_load_errors_are_distillprune_errors(tmp_path):
    with pytest.raises(DistillpruneError):
        load_runs([tmp_path / "x", tmp_path / "y"])


def test_compare_lists_recipe_differences(two_runs, tmp_path):
    a, b = two_runs
    meta = b / "stages" / "04_finetune" / "model.json"
    d = json.loads(meta.read_text())
    d["recipe"]["stages"][1]["width"] = {"ratio": 0.3}
    d["recipe"]["seed"] = 1
    meta.write_text(json.dumps(d))
    runs = load_runs(two_runs)
    assert recipe_differences(runs) == [["seed", "0", "1"], ["stages.1.width.ratio", "-", "0.3"]]
    html = write_compare(runs, tmp_path / "c.html").read_text()
    assert "<h2>Recipe differences</h2>" in html and "stages.1.width.ratio" in html


def test_compare_notes_the_same_dense_model_timed_apart(two_runs):
    a, b = two_runs
    rep = json.loads((b / "report.json").read_text())
    rep["stages"][0]["latency_ms"]["ort_bs1"] = 0.45  # the dense model again, on a busier machine
    (b / "report.json").write_text(json.dumps(rep))
    (note,) = latency_notes(load_runs(two_runs))
    assert "0.300 ms (a) vs 0.450 ms (b) on ort_bs1" in note


def test_stage_names_stay_whole_at_80_columns_and_the_ms_columns_are_labelled():
    from dataclasses import replace

    report = synthetic_report()
    report.stages = [replace(s, name=f"{i}:evaluate_the_student") for i, s in enumerate(report.stages)]
    console = Console(width=80, record=True)
    print_table(report, console=console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    shown = [s.name for s in report.stages if s.measured]
    assert len(shown) >= 4 and all(name in text.split() for name in shown)
    assert "the ratio of two rows is not the speedup" in " ".join(text.split())
