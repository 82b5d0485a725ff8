"""``report.html``: the report as one self-contained web page, rendered from report data only.

Views: accuracy vs measured latency (each batch size: stages, Pareto front, target, search
candidates), per-stage bars and the full table, per-layer widths before/after, training curves
from metrics.jsonl, stage details, the environment and the recipe as run.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from distillprune.core.io import write_text
from distillprune.report.curves import curves_svg
from distillprune.report.page import cards, figure, page, table
from distillprune.report.plots import (
    CANDIDATES_LABEL,
    EST_TOP1,
    accuracy_latency_svg,
    latency_keys,
    latency_label,
    latency_spread,
    plans,
    stage_bars_svg,
)
from distillprune.report.render import columns, flag_lines, load_note, rows
from distillprune.report.report import QUALITY, CompressionReport
from distillprune.report.run_folder import RunData, read_metrics, read_recipe
from distillprune.report.widths import layer_rows, removed_blocks, widths_svg


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def summary_cards(report: CompressionReport) -> list[tuple[str, str]]:
    base, final = report.baseline, report.final
    if base is None or final is None:
        return []
    items = []
    key = report.quality_key
    q0, q1 = base.quality(key), final.quality(key)
    if q0 is not None and q1 is not None:
        items.append((f"{QUALITY[key][0]}: dense → final (pp)", f"{q0:.2f} → {q1:.2f}% ({q1 - q0:+.2f})"))
    for key in latency_keys(report):
        sp = report.speedup(final, key)
        if sp is not None:
            items.append((f"measured speedup, {latency_label(key)}", _x(sp)))
    items.append(("fewer MACs", _x(report.mac_ratio(final))))
    if base.params and final.params:
        items.append(("fewer parameters", _x(base.params / final.params)))
    if base.onnx_bytes and final.onnx_bytes:
        items.append(("smaller file", _x(base.onnx_bytes / final.onnx_bytes)))
    return items


def _header(report: CompressionReport, run: RunData) -> str:
    env = report.environment
    where = f" · run folder <code>{escape(run.folder.name)}</code>" if run.folder else ""
    lat = (
        f"Latency: ONNX Runtime {escape(str(env.get('onnxruntime', '?')))} CPU provider, "
        f"{escape(str(env.get('ort_threads', '?')))} intra-op thread(s), median of timed windows, on "
        f"{escape(str(env.get('cpu_model') or env.get('processor', '?')))}."
    )
    return (
        f"<h1>distillprune report: {escape(report.recipe)}</h1>"
        f'<p class="muted">Rendered from report.json{where}. {lat} Speedups and MAC ratios are relative '
        f"to the dense model (the first measured stage, {escape(report.baseline.name if report.baseline else '-')})"
        f".</p>" + cards(summary_cards(report))
    )


def _candidates_table(report: CompressionReport) -> str:
    out = []
    for p in plans(report):
        head = [
            f"target of {p.stage}: {p.target_text()}",
            f"achieved: {p.achieved:.2f}x" if isinstance(p.achieved, (int, float)) else "achieved: not recorded",
        ]
        out.append(f"<h3>{escape(' · '.join(head))}</h3>")
        if not p.candidates:
            out.append('<p class="note">This plan recorded no candidates.</p>')
            continue
        keys = sorted({k for c in p.candidates if isinstance(c.get("latency_ms"), dict) for k in c["latency_ms"]})
        body = [
            [
                c.get("label", "?"),
                _num(c.get("macs"), "{:,}"),
                *(_num((c.get("latency_ms") or {}).get(k), "{:.3f}") for k in keys),
                _num(c.get("predicted"), "{:.2f}x"),
                _num(c.get("speedup"), "{:.2f}x"),
                _num(c.get("est_top1"), "{:.2f}"),
                "yes" if c.get("chosen") else "",
            ]
            for c in p.candidates
        ]
        out.append(
            table(
                ["candidate", "MACs", *(f"{k} ms" for k in keys), "predicted", "measured", EST_TOP1, "chosen"],
                body,
                ["chosen" if c.get("chosen") else "" for c in p.candidates],
                text_cols=(0,),
            )
        )
    return "".join(out)


def _num(v: Any, fmt: str) -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _pareto_section(report: CompressionReport) -> str:
    figs = [
        figure(
            accuracy_latency_svg(report, k),
            f"{QUALITY[report.quality_key][0].capitalize()} against measured latency, {escape(latency_label(k))}. "
            "Dashed: the Pareto front of the stages (no other stage is both faster and more accurate). Top axis: "
            "speedup over the dense model."
            + (" Error bars: fastest and slowest timed window." if _has_spread(report, k) else ""),
            f"No stage has both an accuracy and a {k} latency.",
        )
        for k in latency_keys(report)
    ]
    if not figs:
        return '<p class="note">No stage was measured with latency (measure.enabled: false, or no measured stage).</p>'
    notes = []
    if any(p.candidates for p in plans(report)):
        notes.append(
            f"<p>Triangles: {escape(CANDIDATES_LABEL)} — pruned copies the target search timed, scored "
            "before any training, so they sit below what the fine-tuned stages reach; the star is the "
            "plan the prune stage used; the dotted line is the target latency (dense latency / target "
            "speedup).</p>"
        )
    if plans(report):
        notes.append(
            "<details><summary>Target search: the plan and every candidate</summary>"
            + _candidates_table(report)
            + "</details>"
        )
    return f'<div class="grid">{"".join(figs)}</div>' + "".join(notes)


def _has_spread(report: CompressionReport, key: str) -> bool:
    return any(latency_spread(s, key) for s in report.stages)


def _stages_section(report: CompressionReport) -> str:
    flags = flag_lines(report)
    flag_html = (
        (
            "<h3>Flags</h3><ul>"
            + "".join(f'<li class="flag"><b>{escape(n)}</b>: {escape(f)}</li>' for n, f in flags)
            + "</ul>"
        )
        if flags
        else ""
    )
    return (
        figure(
            stage_bars_svg(report),
            "Per measured stage, in run order (colours as in the scatter plots). "
            f"{QUALITY[report.quality_key][0].capitalize()} change is relative to the dense model.",
            "No measured stage.",
        )
        + '<h3>All columns</h3><p class="note">Δ top-1, size gain and stage speedup are relative to the '
        "previous row; a row marked [file] measures that deployed file (int8 ONNX, packed weights).</p>"
        + table(columns(report), rows(report), text_cols=(0,))
        + flag_html
    )


def _widths_section(report: CompressionReport) -> str:
    states, lrows = layer_rows(report)
    if not lrows:
        return (
            '<p class="note">This report has no per-layer widths (report.json written before distillprune '
            "recorded them); run the recipe again to see what each stage cut.</p>"
        )
    first_row = {r.block: i for i, r in reversed(list(enumerate(lrows))) if r.block}
    blocks = sorted(removed_blocks(report), key=lambda b: first_row.get(b, len(lrows)))  # model order
    head = (
        f"<p>Output channels of every Conv and output features of every Linear layer, in model order, for "
        f"each distinct architecture: {escape(', '.join(s.stage for s in states))}. Percentages are the share "
        "of the dense width kept.</p>"
    )
    if blocks:
        head += (
            '<p>Residual blocks removed by depth pruning (shaded, marked <span class="bad">removed</span>): '
            + ", ".join(f"<code>{escape(b)}</code>" for b in blocks)
            + ".</p>"
        )
    body = [
        [
            r.name,
            *("-" if w is None else w for w in r.widths),
            f"{r.widths[-1] / r.widths[0]:.0%}" if r.widths[0] and r.widths[-1] is not None else "-",
            r.status + (f" ({r.block})" if r.block else ""),
        ]
        for r in lrows
    ]
    tbl = table(
        ["layer", *(s.stage for s in states), "kept", "status"],
        body,
        ["bad" if r.status.startswith("removed") else "" for r in lrows],
        text_cols=(0, len(states) + 2),
    )
    return (
        head
        + figure(widths_svg(report), "Per-layer widths; red: removed.", "No widths recorded.")
        + f"<details><summary>Per-layer table ({len(lrows)} layers)</summary>{tbl}</details>"
    )


def _curves_section(metrics: list[dict[str, Any]]) -> str:
    return figure(
        curves_svg(metrics),
        "Per epoch of each training stage (metrics.jsonl): training loss (the "
        "stage's objective, e.g. KD + CE), train and test top-1, learning rate. Dotted lines separate "
        "a stage's phases (prune steps, born-again generations). A fine-tune of trained weights also shows its "
        "held-out checks (top-1 on images held out of the training split, the start included) and, as a star, "
        "the point it kept.",
        "No training curves: this run folder has no metrics.jsonl records (no training stage ran, "
        "or the run was not given a folder).",
    )


def _compact(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "), default=str)


def _details_section(report: CompressionReport) -> str:
    """Each stage's details as key/value rows (nested values as compact JSON); a plan's candidates are
    in the target-search table instead."""
    items = []
    for s in report.stages:
        dd = s.details_dict()
        d = {k: v for k, v in dd.items() if k != "plan"}
        if isinstance(dd.get("plan"), dict):
            d["plan"] = {k: v for k, v in dd["plan"].items() if k != "candidates"}
        items.append(
            f'<h3>{escape(s.name)} <span class="muted">({escape(s.type)}, {s.seconds:.1f} s)</span></h3>'
            + (
                table(["detail", "value"], [[k, _compact(v)] for k, v in d.items()], text_cols=(0, 1))
                if d
                else '<p class="note">No details.</p>'
            )
        )
    return "".join(items) or '<p class="note">No stages.</p>'


def _environment_section(report: CompressionReport, recipe: dict[str, Any] | None) -> str:
    env = dict(report.environment)
    rows_ = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in env.items()]
    recipe_html = (
        f"<pre>{escape(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))}</pre>"
        if recipe
        else '<p class="note">The recipe as run is not in this run folder (the stage '
        "checkpoints carry it; none was found).</p>"
    )
    loads = [
        [s.name, note.removeprefix("machine load while timing: ")]
        for s in report.stages
        if (note := load_note(report, s))
    ]
    load_html = (
        "<h3>Machine load while timing</h3>" + table(["stage", "load (from /proc/loadavg)"], loads, text_cols=(0, 1))
        if loads
        else ""
    )
    return (
        table(["", "value"], rows_, text_cols=(0, 1))
        + load_html
        + "<h3>Recipe as run (resolved, with defaults)</h3>"
        + recipe_html
    )


def render_html(run: RunData | CompressionReport) -> str:
    """The report page of ``run`` (a RunData, or a bare report: then without curves and recipe)."""
    run = run if isinstance(run, RunData) else RunData(run)
    report = run.report
    from distillprune import __version__

    sections = [
        ("pareto", "Accuracy vs measured latency", _pareto_section(report)),
        ("stages", "Per stage", _stages_section(report)),
        ("widths", "Per-layer widths", _widths_section(report)),
        ("curves", "Training curves", _curves_section(run.metrics)),
        ("details", "Stage details", _details_section(report)),
        ("environment", "Environment and recipe", _environment_section(report, run.recipe)),
    ]
    footer = (
        f"distillprune {escape(__version__)} · report.json format {report.version} · self-contained page: "
        "no network, figures are inline SVG."
    )
    return page(f"distillprune: {report.recipe}", _header(report, run), sections, footer)


def write_html(report: CompressionReport, run_dir: str | Path) -> Path:
    """Render ``run_dir/report.html`` from ``report`` plus the folder's metrics.jsonl and recipe."""
    folder = Path(run_dir)
    run = RunData(report, read_metrics(folder / "metrics.jsonl"), read_recipe(folder), folder)
    return write_text(folder / "report.html", render_html(run))
