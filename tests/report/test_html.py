"""The HTML report and its pieces, without a browser: what each view contains, that old run folders
render, that the page is self-contained. (tests/report/test_html_browser.py opens it in Chromium.)"""

from __future__ import annotations

import json
import re

import pytest
from synthetic import CANDIDATES, old_report_dict, synthetic_report, write_run

from distillprune.report.curves import training_curves
from distillprune.report.html import render_html, write_html
from distillprune.report.plots import (
    CANDIDATES_LABEL,
    accuracy_latency_svg,
    latency_keys,
    pareto_front,
    plans,
    speedup_ticks,
    target_latency,
)
from distillprune.report.report import CompressionReport
from distillprune.report.run_folder import load_run, read_metrics, read_recipe
from distillprune.report.widths import layer_rows, width_states


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run") / "synthetic")


@pytest.fixture(scope="module")
def page(run_dir):
    return render_html(load_run(run_dir))


def figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'<svg class="fig" data-figure="([^"]+)".*?>(.*?)</svg>', html, flags=re.S))


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 90.0), (0.5, 85.0), (0.6, 84.0), (2.0, 91.0), (2.5, 90.5), (0.5, 80.0)]
    assert pareto_front(pts) == [1, 0, 3]  # by latency; (0.6, 84) and (2.5, 90.5) and (0.5, 80) are beaten


def test_speedup_ticks_are_round_and_spaced():
    ticks = speedup_ticks(0.3, 0.1, 0.35)
    assert ticks[0] == 3 and ticks[-1] == 1
    xs = [0.3 / t for t in ticks]
    assert all(b - a >= 0.06 * 0.25 for a, b in zip(xs, xs[1:], strict=False))


def test_target_latency_is_dense_latency_over_target_speedup():
    rep = synthetic_report()
    (plan,) = plans(rep)
    assert plan.achieved == 2.14 and len(plan.candidates) == len(CANDIDATES)
    assert target_latency(rep, plan, "ort_bs1") == pytest.approx(0.300 / 2.0)
    assert target_latency(rep, plan, "ort_bs32") is None  # the target is at batch 1


def test_every_view_is_rendered(page):
    figs = figures(page)
    assert set(figs) == {"pareto-ort_bs1", "pareto-ort_bs32", "stage-bars", "widths", "curves"}
    for name, svg in figs.items():
        assert svg.count("<path") + svg.count("<use") > 30, name
    for section in (
        "Accuracy vs measured latency",
        "Per stage",
        "Per-layer widths",
        "Training curves",
        "Stage details",
        "Environment and recipe",
    ):
        assert f"<h2>{section}</h2>" in page


def test_pareto_plot_marks_candidates_target_and_front(page):
    bs1, bs32 = figures(page)["pareto-ort_bs1"], figures(page)["pareto-ort_bs32"]
    for gid in ("candidates-0", "chosen-0", "target-0", "front", "stage-1", "stage-5"):
        assert f'id="pareto-ort_bs1-{gid}"' in bs1, gid
    assert 'id="pareto-ort_bs32-target-0"' not in bs32  # a batch-1 target has no line at batch 32
    assert 'id="pareto-ort_bs32-candidates-0"' in bs32
    # four candidates have an estimate and a bs1 latency: four markers in the series
    series = re.search(r'id="pareto-ort_bs1-candidates-0">(.*?)</g>', bs1, flags=re.S).group(1)
    assert series.count("<path") + series.count("<use") == 4
    assert CANDIDATES_LABEL in page  # the series is named in words too
    assert "Error bars: fastest and slowest timed window." in page  # stage 1 carries a latency spread


def test_candidates_table_lists_every_candidate(page):
    for c in CANDIDATES:
        assert c["label"] in page
    assert page.count('<tr class="chosen">') == 1
    assert "2x measured speedup at batch 1" in page and "achieved: 2.14x" in page


def test_widths_show_removed_block_narrowed_and_factorised_layers():
    states, rows = layer_rows(synthetic_report())
    assert [s.stage for s in states] == ["1:train", "2:prune", "3:lowrank"]  # finetune/quantize change nothing
    status = {r.name: r.status for r in rows}
    assert status["layer1.1.conv1"] == "removed block" and status["layer1.1.conv2"] == "removed block"
    assert status["conv1"] == "narrowed" and status["fc"] == "unchanged"
    assert status["layer2.0.conv1"] == "factorised"
    assert status["layer2.0.conv1.0"] == status["layer2.0.conv1.1"] == "added"
    names = [r.name for r in rows]  # model order: the factors follow the layer they replace
    assert names.index("layer1.1.conv2") < names.index("layer2.0.conv1") < names.index("layer2.0.conv1.0")
    assert names.index("layer2.0.conv1.1") < names.index("layer2.0.conv2")


def test_widths_section_names_removed_blocks(page):
    assert "<code>layer1.1</code>" in page
    assert re.search(r'<tr class="bad"><td class="text">layer1\.1\.conv1</td>', page)


def test_training_curves_from_metrics(run_dir):
    recs = read_metrics(run_dir / "metrics.jsonl")  # the torn last line is skipped
    curves = {c.stage: c for c in training_curves(recs)}
    assert list(curves) == ["1:train", "2:prune", "3:lowrank", "4:finetune"]
    prune = curves["2:prune"]
    assert prune.x == [1, 2, 3, 4] and [p for p, _ in prune.phases] == ["step1", "step2"]
    ft = curves["4:finetune"]
    assert ft.x == [1, 2, 3] and ft.series["loss"][1] == pytest.approx(0.15)  # the repeated epoch once


def test_environment_and_recipe_are_shown(page):
    assert "AMD EPYC 7B13" in page and "avx, avx2, fma" in page and "torch_pruning" in page
    assert "Recipe as run" in page and "name: synthetic" in page


def test_page_is_self_contained_and_escaped(tmp_path):
    rep = synthetic_report('<script>alert("x")</script>')
    html = render_html(rep)
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "@import" not in html and "url(http" not in html
    assert len(re.findall(r"<script>", html)) == 1  # only the print helper


def test_figure_ids_are_unique_and_every_reference_resolves(page):
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'(?:xlink:href|href)="#([^"]+)"', page)) | set(re.findall(r"url\(#([^)]+)\)", page))
    section_anchors = {"pareto", "stages", "widths", "curves", "details", "environment"}
    assert refs - section_anchors <= set(ids)


def test_rendering_is_deterministic(run_dir):
    assert render_html(load_run(run_dir)) == render_html(load_run(run_dir))


def test_old_report_without_new_fields_renders(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(old_report_dict()))
    rep = CompressionReport.load(tmp_path)
    assert all(s.widths == {} for s in rep.stages)
    path = write_html(rep, tmp_path)
    html = path.read_text()
    assert "no per-layer widths" in html and "No training curves" in html and "recipe as run is not" in html
    assert set(figures(html)) == {"pareto-ort_bs1", "pareto-ort_bs32", "stage-bars"}


def test_report_without_latency_or_accuracy_renders():
    rep = synthetic_report()
    for s in rep.stages:
        s.latency_ms, s.accuracy = {}, None
    html = render_html(rep)
    assert latency_keys(rep) == [] and "No stage was measured with latency" in html
    assert accuracy_latency_svg(rep, "ort_bs1") is None


def test_latency_spread_as_a_stage_field_draws_error_bars():
    rep = synthetic_report()
    rep.stages[1].speedups = {"ort_bs32": 3.2}  # paired with the dense model: median and spread of the ratios
    rep.stages[1].latency_spread = {"ort_bs32": [2.5, 3.6]}
    svg = accuracy_latency_svg(rep, "ort_bs32")
    assert 'id="pareto-ort_bs32-stage-2"' in svg
    assert "Error bars" in render_html(rep).split('data-figure="pareto-ort_bs32"')[1].split("</figure>")[0]


def test_recipe_comes_from_the_latest_stage_checkpoint(tmp_path):
    for i, name in ((1, "first"), (3, "last")):
        d = tmp_path / "stages" / f"0{i}_x"
        d.mkdir(parents=True)
        (d / "model.json").write_text(json.dumps({"recipe": {"name": name}}))
    assert read_recipe(tmp_path) == {"name": "last"}
    assert read_recipe(tmp_path / "nothing") is None


def test_width_states_skip_stages_without_widths():
    rep = synthetic_report()
    rep.stages[0].widths = {}
    assert [s.stage for s in width_states(rep)][0] == "2:prune"


def test_layer_widths_of_a_depth_and_width_pruned_model():
    import torch

    from distillprune.measure.metrics import layer_widths
    from distillprune.models.resnet import ResNet
    from distillprune.prune.depth import remove_block

    model = ResNet((8, 16), (2, 1), num_classes=10, in_channels=1)
    dense = layer_widths(model)
    assert list(dense) == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.1.conv1",
        "layer1.1.conv2",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.shortcut.0",
        "fc",
    ]
    assert dense["layer2.0.conv1"] == 16 and dense["fc"] == 10
    remove_block(model, "layer1.1")
    model.layer2[0].conv1 = torch.nn.Conv2d(8, 12, 3)  # stands in for a width-pruned layer
    after = layer_widths(model)
    assert "layer1.1.conv1" not in after and after["layer2.0.conv1"] == 12


def test_gpu_latencies_get_their_own_plots_and_bars():
    rep = synthetic_report()
    for s in rep.stages:
        if s.measured:
            s.latency_ms.update({"gpu_graph_bs256": 2.0 / s.index, "gpu_eager_bs256": 3.0 / s.index})
    assert latency_keys(rep) == ["ort_bs1", "ort_bs32", "gpu_eager_bs256", "gpu_graph_bs256"]
    figs = figures(render_html(rep))
    assert {"pareto-gpu_eager_bs256", "pareto-gpu_graph_bs256", "stage-bars"} <= set(figs)
