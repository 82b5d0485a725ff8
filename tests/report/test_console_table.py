"""The compact console table fits 80 columns whatever the labels: the longest stage names the registered stages
produce, deployed files with long names (in a footnote), two-digit accuracy changes, counts in the billions
and an encoder's quality metrics; numbers are never wrapped or cut, at 80 and at 100 columns."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from distillprune.recipes.registry import STAGES
from distillprune.report import print_table
from distillprune.report.compare import print_compare
from distillprune.report.render import compact_view, fit_labels
from distillprune.report.report import CompressionReport, StageResult
from distillprune.report.run_folder import RunData

#: the file names the stages name their artefacts by (cluster: 'FILE (codec)'), made long on purpose
ARTEFACTS = {"cluster": "model.cluster.weights.packed.xz (lzma)", "quantize": "model.student.int8.static.onnx"}


def longest_report(metrics: bool = False) -> CompressionReport:
    """Every registered stage type at a two-digit index, with the widest figures each column formats."""
    rep = CompressionReport("a-recipe-with-a-rather-long-name-" * 2, {})
    for i, kind in enumerate(STAGES.in_order()):
        index = 10 + i
        rep.add(
            StageResult(
                index,
                f"{index}:{kind}",
                kind,
                1.0,
                accuracy=None if metrics else 99.99 if i % 2 else 9.99,  # Δ top-1 of ±90 pp; encoders: none
                params=999_990_000_000 // (i + 1),
                macs=987_650_000_000 // (i + 1),
                onnx_bytes=1_500_000_000,
                latency_ms={"ort_bs1": 1234.567 / (i + 1), "ort_bs32": 99999.999 / (i + 1)},
                speedups={"ort_bs1": 0.01 + i * 12.34},
                artefact=ARTEFACTS.get(kind),
                metrics={"cosine": 0.987654, "top10_overlap": 0.999} if metrics else {},
            )
        )
    return rep


def _lines(report: CompressionReport, width: int, wide: bool = False) -> list[str]:
    console = Console(width=width, record=True)
    print_table(report, wide=wide, console=console)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("metrics", [False, True], ids=["classifier", "encoder"])
def test_compact_table_fits_80_columns_and_keeps_every_number_whole(width, metrics):
    report = longest_report(metrics)
    headers, rows, footnotes = compact_view(report, 80)
    lines = _lines(report, width)
    assert max(map(len, lines)) <= 80
    for header in headers:  # one line of headers, none wrapped
        assert any(re.search(rf"(^|\s){re.escape(header)}(\s|$)", line) for line in lines), header
    for row in rows:  # each row is one line holding its label and every figure whole
        line = next(ln for ln in lines if ln.startswith(row[0] + " "))
        assert line.split() == row, line
    assert len(headers) >= 6  # stage, ms, speedup and the quality of the model at least
    if metrics:
        assert "cosine" in headers and "0.9877" in "\n".join(lines) and "top-1" not in headers


def test_figures_too_wide_for_80_columns_give_way_rather_than_wrap():
    report = longest_report()
    for s in report.stages:
        s.latency_ms = {k: 1e7 * v for k, v in s.latency_ms.items()}  # 12345678901.234 ms
        s.metrics = {"cosine": 0.5, "top10_overlap": 0.5, "a_metric_with_a_long_name": 0.5}
    headers, rows, _ = compact_view(report, 80)
    assert "real/MAC" not in headers and {"stage", "top-1", "bs1 ms", "speedup"} <= set(headers)
    lines = _lines(report, 80)
    assert max(map(len, lines)) <= 80 and not any("…" in r[0] for r in rows)  # room for whole labels
    for row in rows:
        assert next(ln for ln in lines if ln.startswith(row[0] + " ")).split() == row  # no figure cut


def test_labels_are_shortened_with_the_file_in_a_footnote():
    report = longest_report()
    _, rows, footnotes = compact_view(report, 80)
    text = "\n".join(_lines(report, 80))
    for kind, artefact in ARTEFACTS.items():
        name = next(s.name for s in report.stages if s.type == kind)
        (note,) = [f for f in footnotes if f.split()[1] == name]
        assert note.endswith(f"measures {artefact}")
        mark = note.split()[0]
        assert any(r[0] == name + mark for r in rows)  # the stage keeps its whole name, marked
        assert f"{mark} {name} measures" in text
    assert "[" not in "".join(r[0] for r in rows)  # the file is not in the table


def test_a_label_too_long_for_the_room_left_is_cut_and_footnoted():
    rows, notes = fit_labels(["stage", "n"], [["1:" + "x" * 90, "12345"], ["2:short", "1"]], [None, None], 40)
    assert rows[1] == ["2:short", "1"]
    assert rows[0][1] == "12345" and len(rows[0][0]) == 40 - 2 - 5 and rows[0][0].endswith("…¹")
    assert notes == ["¹ 1:" + "x" * 90]


def test_wide_table_still_has_every_column_and_the_file_by_its_stage():
    text = "\n".join(_lines(longest_report(), 400, wide=True))
    assert "stage speedup bs1" in text and ARTEFACTS["quantize"] in text


@pytest.mark.parametrize("width", [80, 100])
def test_compare_table_fits_80_columns_with_long_run_labels(width):
    runs = [RunData(longest_report(), name=f"experiments/2026-07-{i:02d}/sweep-over-width-and-depth") for i in (1, 2)]
    console = Console(width=width, record=True)
    print_compare(runs, console=console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    assert any(line.startswith("¹ experiments/2026-07-01/sweep-over-width-and-depth") for line in lines)
