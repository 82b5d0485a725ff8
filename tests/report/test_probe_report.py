"""An embedding model's run (no classifier: kNN and linear-probe top-1 from the recipe's probe) is shown like
a classifier's: the table's top-1 columns, the page's scatter and summary, and compare, all read kNN top-1."""

from __future__ import annotations

import io

from rich.console import Console

from distillprune.report.compare import compare_rows
from distillprune.report.html import render_html, summary_cards
from distillprune.report.plots import accuracy_latency_svg
from distillprune.report.render import columns, print_table, render_markdown, rows
from distillprune.report.report import CompressionReport, StageResult
from distillprune.report.run_folder import RunData


def _stage(index: int, name: str, knn: float, ms: float, macs: int) -> StageResult:
    return StageResult(
        index,
        f"{index}:{name}",
        name,
        1.0,
        params=macs // 100,
        macs=macs,
        onnx_bytes=macs // 10,
        latency_ms={"ort_bs1": ms},
        speedups={"ort_bs1": 0.5 / ms},
        metrics={"cosine": 0.9, "top10_overlap": 0.5, "knn_top1": knn, "linear_top1": knn + 5},
    )


def _report() -> CompressionReport:
    rep = CompressionReport("ssl", {"ort_threads": 1})
    for s in (_stage(1, "train", 71.5, 0.5, 40_000_000), _stage(2, "prune", 66.25, 0.25, 20_000_000)):
        rep.add(s)
    return rep


def test_the_table_reads_knn_top1_in_the_top1_columns():
    rep = _report()
    assert rep.quality_key == "knn_top1"
    cols = columns(rep)
    assert cols[1:3] == ["kNN top-1 %", "Δ kNN top-1 pp"]
    assert "linear probe top-1 %" in cols and "kNN top-1 %" not in cols[3:]  # not twice
    table = rows(rep)
    assert table[0][1] == "71.50" and table[1][1] == "66.25" and table[1][2] == "-5.25"
    assert table[1][cols.index("linear probe top-1 %")] == "71.25"
    md = render_markdown(rep)
    assert "| stage | kNN top-1 % | Δ kNN top-1 pp |" in md
    out = io.StringIO()
    print_table(rep, console=Console(file=out, width=200))
    assert "kNN" in out.getvalue() and "66.25" in out.getvalue()


def test_the_page_and_compare_show_knn_like_top1():
    rep = _report()
    svg = accuracy_latency_svg(rep, "ort_bs1")
    assert svg is not None and "kNN top-1" in svg
    assert summary_cards(rep)[0] == ("kNN top-1: dense → final (pp)", "71.50 → 66.25% (-5.25)")
    assert "kNN top-1 %" in render_html(RunData(rep))
    row = compare_rows([RunData(rep, name="ssl")])[0]
    assert row[3:6] == ["71.50 (kNN)", "66.25 (kNN)", "-5.25"]


def test_a_classifier_run_is_unchanged():
    rep = _report()
    for s in rep.stages:
        s.accuracy = 90.0
    cols = columns(rep)
    assert rep.quality_key == "accuracy" and cols[1:3] == ["top-1 %", "Δ top-1 pp"]
    assert "kNN top-1 %" in cols[3:] and rows(rep)[1][cols.index("kNN top-1 %")] == "66.25"  # a metric column then
