"""A report.json is data that may have been edited: every string of it reaches the page escaped, attribute
values and SVG ids included; a wrongly typed plan target is one line; a stage name in matplotlib's mathtext
syntax is text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hostile_helpers import refused, run

from distillprune.report.report import CompressionReport, StageResult

SCRIPT = "<script>alert(1)</script>"
KEYS = [f"ort_bs1{SCRIPT}", 'ort_bs32" onload="alert(2)', "ort_bs8'><img src=x onerror=alert(3)>"]


def _report(folder: Path, names: tuple[str, str], plan_target: object = None) -> Path:
    rep = CompressionReport(f"recipe {SCRIPT}", {"onnxruntime": SCRIPT, "cpu_model": '"><b>cpu</b>'})
    for i, (name, acc, macs) in enumerate(zip(names, (97.0, 95.0), (1_000_000, 400_000), strict=True), start=1):
        details = {"plan": {"target": plan_target, "candidates": []}} if plan_target is not None and i == 2 else None
        rep.add(
            StageResult(
                i, name, "prune" if i == 2 else "train", 1.0, accuracy=acc, params=1000 * i, nonzero_params=1000 * i,
                macs=macs, onnx_bytes=4000, latency_ms={k: 1.0 / i for k in KEYS}, details=details,
                flags=[f"flag {SCRIPT}"], widths={f"layer{SCRIPT}": 8, 'fc"x': 10},
            )
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    rep.save(folder)
    return folder


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts, self.attrs = 0, []

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.attrs += [(tag, k, v) for k, v in attrs]


def test_every_string_of_a_report_reaches_the_page_escaped(tmp_path, capsys):
    folder = _report(tmp_path / "run", (f"1:train{SCRIPT}", "2:prune\"'<i>"))
    assert run(capsys, "report", folder, "--html")[0] == 0
    page = (folder / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    assert tags.scripts == 1  # the page's own script (it opens <details> before printing), nothing else
    assert not [a for a in tags.attrs if a[1].startswith("on")]  # no event handler got in
    assert not [a for a in tags.attrs if a[0] == "img"]
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert ids and all(re.fullmatch(r"[A-Za-z0-9_.-]+", i) for i in ids), [i for i in ids if "<" in i or " " in i]
    assert SCRIPT not in page and "alert(1)" in page  # the text is there, as text


@pytest.mark.parametrize("target", ["2x faster", [2.0, 1], {"latency_speedup": "fast"}])
def test_a_plan_target_of_the_wrong_type_is_one_line(tmp_path, capsys, target):
    folder = _report(tmp_path / "run", ("1:train", "2:prune"), plan_target=target)
    assert run(capsys, "report", folder)[0] == 0  # the Markdown report does not read the plan
    refused(capsys, "report", folder, "--html", match="details.plan.target")


def test_a_stage_name_in_mathtext_is_text(tmp_path, capsys):
    folder = _report(tmp_path / "run", ("1:train", r"2:$\undefinedcommand$"))
    assert run(capsys, "report", folder, "--html")[0] == 0
    assert r"2:$\undefinedcommand$" in (folder / "report.html").read_text()
