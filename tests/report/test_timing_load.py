"""Timing context: the machine's 1-minute load average and runnable processes before and after each timing, in
report.json and on the report page next to the noise flag; reports written before it still render."""

from __future__ import annotations

import json

import torch
from synthetic import old_report_dict, synthetic_report, write_run

from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig
from distillprune.pipeline import timing
from distillprune.pipeline.timing import StageTimer, machine_load
from distillprune.report import CompressionReport, render_markdown
from distillprune.report.html import render_html

FAST = LatencyConfig(batch_sizes=[1], warmup=1, repeats=1, min_window_s=0.001, pairs=1)


def test_machine_load_reads_the_load_average_and_the_runnable_count(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("6.12 5.40 3.02 9/1432 48211\n")
    assert machine_load(f) == {"load1": 6.12, "runnable": 9}
    assert machine_load(tmp_path / "none") is None
    f.write_text("garbage\n")
    assert machine_load(f) is None


def test_every_timing_records_the_load_before_and_after_and_a_reused_one_keeps_its_own(monkeypatch):
    readings = iter([{"load1": float(i), "runnable": i + 1} for i in range(4)])
    monkeypatch.setattr(timing, "machine_load", lambda: next(readings))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    blob, timer = onnx_bytes(model, (16,)), StageTimer(FAST, (16,), None)
    base = timer.time(blob, "0:input", "a")
    paired = timer.time(blob, "1:train", "b")
    reused = timer.time(blob, "2:finetune", "b")  # the same architecture: the timing (and its load) is reused
    assert base.load == {"before": {"load1": 0.0, "runnable": 1}, "after": {"load1": 1.0, "runnable": 2}}
    assert paired.load == {"before": {"load1": 2.0, "runnable": 3}, "after": {"load1": 3.0, "runnable": 4}}
    assert reused.how.startswith("reused") and reused.load == paired.load


def test_the_load_is_in_report_json_and_next_to_the_flags_on_the_page(tmp_path):
    rep = synthetic_report()
    prune = rep.stages[1]
    prune.flags.append("ort_bs1: speedup pairs spread 1.50x-3.40x: too noisy to resolve (> 25% of the median)")
    run = tmp_path / "r"
    run.mkdir()
    rep.save(run)
    stored = json.loads((run / "report.json").read_text())["stages"][1]["load"]
    assert stored == {"before": {"load1": 6.1, "runnable": 9}, "after": {"load1": 7.3, "runnable": 11}}
    loaded = CompressionReport.load(run)
    md = render_markdown(loaded)
    flags = md.split("## Flags")[1].splitlines()
    noisy = next(i for i, ln in enumerate(flags) if "too noisy" in ln)
    assert flags[noisy + 1] == (
        "- **2:prune**: machine load while timing: 1-min load average 6.10 before, 7.30 after; "
        "9 then 11 runnable processes for 2 cores (the timing one included)"
    )
    page = render_html(loaded)
    flag_list = page.split("<h3>Flags</h3>")[1].split("</ul>")[0]
    assert "too noisy" in flag_list and "1-min load average 6.10 before, 7.30 after" in flag_list
    assert "<h3>Machine load while timing</h3>" in page


def test_a_report_without_load_still_renders(tmp_path):
    old = old_report_dict()
    assert all("load" not in s for s in old["stages"])
    run = tmp_path / "old"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(old))
    rep = CompressionReport.load(run)
    assert all(s.load == {} for s in rep.stages)
    assert "machine load" not in render_markdown(rep) and "Machine load" not in render_html(rep)
    write_run(tmp_path / "new")  # and one that has it loads with it
    assert CompressionReport.load(tmp_path / "new").stages[1].load["after"]["runnable"] == 11
