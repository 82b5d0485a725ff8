"""The README's figures come from a command (``make readme``, scripts/readme.py): its demo block (and the one of
docs/benchmarks.md) is exactly what the script writes for the kept demo report, that report is the demo's
(its rows are the stages the demo recipe has now), and no wall time is typed in by hand. Deterministic: it
compares text with text, nothing is re-timed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from distillprune.recipes import BUILTIN
from distillprune.recipes.registry import STAGES
from distillprune.report import CompressionReport
from distillprune.report.render import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_script", ROOT / "scripts" / "readme.py")
assert spec is not None and spec.loader is not None
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)
REPORT = CompressionReport.load(readme.STORED)


@pytest.mark.parametrize("doc", readme.DOCS, ids=lambda p: p.name)
def test_the_demo_block_is_what_the_script_writes_for_the_kept_report(doc):
    written = readme.current_block(doc.read_text(encoding="utf-8"), "demo")
    assert written is not None, f"{doc.name} has no demo block"
    assert written == readme.block("demo", readme.demo_block(REPORT)), (
        f"{doc.name}: the demo block differs from what the kept report gives: run `make readme` "
        "(or `python scripts/readme.py`), do not edit the block"
    )


def test_the_kept_report_is_the_demo_s_as_the_demo_recipe_is_now():
    recipe = yaml.safe_load((BUILTIN / "digits_demo.yaml").read_text())
    assert REPORT.recipe == recipe["name"]
    measured = [f"{i}:{s['type']}" for i, s in enumerate(recipe["stages"], 1) if STAGES.get(s["type"]).measured]
    assert [s.name for s in REPORT.stages if s.measured] == measured, "the demo recipe changed: run `make readme`"
    table = readme.demo_block(REPORT)
    assert "| " + " | ".join(COLUMNS) + " |" in table  # the columns report.md has now
    # a stage that kept the architecture reuses the timing of the row before it (the README once showed otherwise)
    rows = [s for s in REPORT.stages if s.measured]
    for prev, s in zip(rows, rows[1:], strict=False):
        if (s.timing or "").startswith("reused"):
            assert s.latency_ms == prev.latency_ms


def test_the_demo_target_is_the_one_its_recipe_states():
    header = (BUILTIN / "digits_demo.yaml").read_text().split("\n\n")[0]
    assert f">= {readme.TARGET_SPEEDUP:g}x measured ONNX Runtime speedup within {readme.TARGET_PP:g} pp" in header


def test_the_readme_types_no_wall_time_by_hand():
    """Times outside the generated blocks: none in the README (the demo's comes with its machine and load)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("demo", "tests"):
        text = text.replace(readme.current_block(text, name) or "", "")
    assert not re.findall(r"\b\d+(?:\.\d+)? ?(?:s|min) wall|took \d+(?:-\d+)? ?(?:s|min)\b", text)
    assert readme.current_block((ROOT / "README.md").read_text(encoding="utf-8"), "tests") is not None
