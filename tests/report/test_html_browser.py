"""report.html and compare.html in a real browser: headless Chromium over the DevTools protocol.

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it when missing). Without
it these tests FAIL, so a CI machine lacking the browser cannot pass as green; on a developer
machine without Chromium set ``DISTILLPRUNE_ALLOW_NO_BROWSER=1`` to skip them instead.
``DISTILLPRUNE_SCREENSHOTS=<folder>`` keeps the screenshots for a look.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from chromium import PageResult, find_chromium, inspect_page
from PIL import Image
from synthetic import old_report_dict, write_run

from distillprune.report.compare import load_runs, write_compare
from distillprune.report.html import write_html
from distillprune.report.run_folder import load_run


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("DISTILLPRUNE_ALLOW_NO_BROWSER") == "1":
            pytest.skip("Chromium not found and DISTILLPRUNE_ALLOW_NO_BROWSER=1")
        pytest.fail(
            "Chromium not found: install it (Debian: apt-get install chromium), point "
            "DISTILLPRUNE_CHROMIUM at it, or set DISTILLPRUNE_ALLOW_NO_BROWSER=1 to skip the browser tests"
        )
    return binary


def _keep(name: str, res: PageResult) -> None:
    folder = os.environ.get("DISTILLPRUNE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"{name}.png").write_bytes(res.screenshot)
        Path(folder, f"{name}_full.png").write_bytes(res.full_page)


def assert_not_blank(png: bytes, min_std: float = 20.0, min_ink: float = 0.03) -> None:
    """A page, not an empty canvas: varied pixels and a share of them clearly not background."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > min_std, f"screenshot looks blank (pixel std {img.std():.1f})"
    assert (img < 200).mean() > min_ink, f"screenshot has almost no ink ({(img < 200).mean():.3f})"


def assert_clean_load(res: PageResult) -> None:
    assert res.errors == [], res.errors
    assert res.external_requests == [], f"the page is not self-contained: {res.external_requests}"
    assert res.stats["dangling"] == [] and res.stats["duplicate_ids"] == []


def assert_figures(res: PageResult, expected: dict[str, int]) -> None:
    """Each expected figure is present, laid out at a readable size and drawn (≥ n path/use elements)."""
    figs = {f["name"]: f for f in res.stats["figures"]}
    assert set(figs) == set(expected), sorted(figs)
    for name, n in expected.items():
        f = figs[name]
        assert f["paths"] + f["uses"] >= n, (name, f)
        assert f["width"] > 300 and f["height"] > 150, (name, f)


@pytest.fixture(scope="module")
def synthetic_page(tmp_path_factory) -> Path:
    folder = write_run(tmp_path_factory.mktemp("browser") / "synthetic")
    return write_html(load_run(folder).report, folder)


def test_report_page_in_chromium(chromium, synthetic_page):
    res = inspect_page(chromium, synthetic_page, pdf=True)
    _keep("report_synthetic", res)
    assert_clean_load(res)
    assert_figures(res, {"pareto-ort_bs1": 60, "pareto-ort_bs32": 60, "stage-bars": 100, "widths": 80, "curves": 150})
    assert res.stats["sections"] == [
        "Accuracy vs measured latency",
        "Per stage",
        "Per-layer widths",
        "Training curves",
        "Stage details",
        "Environment and recipe",
    ]
    assert res.stats["width"] <= 1280, "the page scrolls sideways on a laptop-sized window"
    assert_not_blank(res.screenshot)
    assert_not_blank(res.full_page, min_ink=0.02)
    # printable: the print stylesheet hides the navigation, keeps every figure, opens the details
    assert res.print_stats == {"nav_display": "none", "figures_visible": 5, "details_open": True}
    assert res.pdf.startswith(b"%PDF") and res.pdf.count(b"/Type /Page") >= 3


def test_narrow_window_has_no_sideways_scroll(chromium, synthetic_page):
    res = inspect_page(chromium, synthetic_page, width=800, height=700, full_page=False)
    assert_clean_load(res)
    assert res.stats["width"] <= 800
    assert all(f["width"] <= 800 for f in res.stats["figures"])


def test_old_run_folder_page_in_chromium(chromium, tmp_path):
    import json

    (tmp_path / "report.json").write_text(json.dumps(old_report_dict()))
    res = inspect_page(chromium, write_html(load_run(tmp_path).report, tmp_path), full_page=False)
    assert_clean_load(res)
    assert_figures(res, {"pareto-ort_bs1": 40, "pareto-ort_bs32": 40, "stage-bars": 100})
    assert_not_blank(res.screenshot)


def test_compare_page_in_chromium(chromium, tmp_path):
    a = write_run(tmp_path / "a", "recipe_a")
    b = write_run(tmp_path / "b", "recipe_b", faster=1.6)
    page = write_compare(load_runs([a, b]), tmp_path / "compare.html")
    res = inspect_page(chromium, page)
    _keep("compare", res)
    assert_clean_load(res)
    assert_figures(res, {"compare-ort_bs1": 60, "compare-ort_bs32": 60})
    assert_not_blank(res.screenshot)
