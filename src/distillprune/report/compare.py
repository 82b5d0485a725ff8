"""``distillprune compare``: several runs on one accuracy-vs-latency plane, a page and a console table.

Latency is compared in absolute milliseconds, so it is only meaningful between runs measured
alike: the page and the table say when the runs' machines, ONNX Runtime versions or thread
counts differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

from distillprune.core.io import write_text
from distillprune.core.run_files import RESERVED
from distillprune.errors import DistillpruneError, printable
from distillprune.report.page import figure, page, table
from distillprune.report.plots import compare_svg, latency_keys, latency_label
from distillprune.report.render import _fmt_bytes, _fmt_int, _x, compact_table, fit_labels
from distillprune.report.report import QUALITY
from distillprune.report.run_folder import RunData, load_run, run_folder

COLUMNS = [
    "run",
    "recipe",
    "stages",
    "dense top-1 %",
    "final top-1 %",
    "Δ top-1 pp",
    "params",
    "MACs",
    "file size",
    "ORT bs1 ms",
    "speedup bs1",
    "ORT bs32 ms",
    "speedup bs32",
    "MAC ratio",
    "realised/MAC",
]
COMPACT = [
    ("run", "run"),
    ("final top-1 %", "top-1"),
    ("Δ top-1 pp", "Δ pp"),
    ("MACs", "MACs"),
    ("ORT bs1 ms", "bs1 ms"),
    ("speedup bs1", "speedup"),
    ("realised/MAC", "real/MAC"),
]
# what must match for absolute latencies to compare
MEASURED_ALIKE = ("cpu_model", "processor", "cpu_count", "onnxruntime", "ort_threads", "gpu")


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    if len(paths) < 2:
        raise DistillpruneError(f"compare needs two or more run folders; got {len(paths)}")
    folders = [run_folder(p).resolve() for p in paths]
    seen: set[Path] = set()
    for p, f in zip(paths, folders, strict=True):
        if f in seen:
            raise DistillpruneError(f"{p}: the same run folder is given twice")
        seen.add(f)
    runs = [load_run(f) for f in folders]
    names = [r.label for r in runs]
    for r in runs:  # two runs/a and other/a: call them by parent/name
        if r.folder is not None and names.count(r.folder.name) > 1:
            r.name = f"{r.folder.parent.name}/{r.folder.name}"
    return runs


def _ms(s, key: str) -> str:
    return f"{s.latency_ms[key]:.3f}" if s is not None and key in s.latency_ms else "-"


def compare_rows(runs: Sequence[RunData]) -> list[list[str]]:
    """One row per run: its dense model against its final measured stage."""
    out = []
    for run in runs:
        rep = run.report
        base, final = rep.baseline, rep.final
        key = rep.quality_key  # top-1, or an embedding model's kNN top-1 (marked)
        acc0, acc1 = (None if s is None else s.quality(key) for s in (base, final))
        tag = "" if key == "accuracy" else f" ({QUALITY[key][1]})"
        sp1 = rep.speedup(final, "ort_bs1") if final else None
        sp32 = rep.speedup(final, "ort_bs32") if final else None
        mr = rep.mac_ratio(final) if final else None
        best = max((v for v in (sp1, sp32) if v is not None), default=None)
        out.append(
            [
                run.label,
                rep.recipe,
                str(sum(s.measured for s in rep.stages)),
                "-" if acc0 is None else f"{acc0:.2f}{tag}",
                "-" if acc1 is None else f"{acc1:.2f}{tag}",
                "-" if acc0 is None or acc1 is None else f"{acc1 - acc0:+.2f}",
                _fmt_int(final.params if final else None),
                _fmt_int(final.macs if final else None),
                _fmt_bytes(final.onnx_bytes if final else None),
                _ms(final, "ort_bs1"),
                _x(sp1),
                _ms(final, "ort_bs32"),
                _x(sp32),
                _x(mr),
                "-" if best is None or not mr else f"{best / mr:.2f}",
            ]
        )
    return out


def environment_differences(runs: Sequence[RunData]) -> list[str]:
    """'<key>: a (run1) vs b (run2)' for every measurement setting that differs between runs."""
    out = []
    for key in MEASURED_ALIKE:
        values = {str(r.report.environment.get(key, "?")) for r in runs}
        if len(values) > 1:
            out.append(f"{key}: " + " vs ".join(f"{r.report.environment.get(key, '?')} ({r.label})" for r in runs))
    return out


def latency_notes(runs: Sequence[RunData], tolerance: float = 0.10) -> list[str]:
    """Runs whose dense models have the same MACs yet were timed more than ``tolerance`` apart: the same
    network, so the gap is the machine (load, frequency), and speedups compare better than milliseconds."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            ba, bb = a.report.baseline, b.report.baseline
            if ba is None or bb is None or ba.macs != bb.macs:
                continue
            for key in sorted(set(ba.latency_ms) & set(bb.latency_ms)):
                x, y = ba.latency_ms[key], bb.latency_ms[key]
                if max(x, y) > (1 + tolerance) * min(x, y):
                    out.append(
                        f"the same dense model ({_fmt_int(ba.macs)} MACs) measured {x:.3f} ms ({a.label}) vs "
                        f"{y:.3f} ms ({b.label}) on {key}: compare speedups rather than milliseconds"
                    )
    return out


def _flatten(d: object, prefix: str = "") -> dict[str, object]:
    items: Iterable[tuple[object, object]]
    if isinstance(d, dict):
        items = d.items()
    elif isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        items = ((str(i), v) for i, v in enumerate(d))
    else:
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def recipe_differences(runs: Sequence[RunData]) -> list[list[str]]:
    """[key, value in run 1, value in run 2, ...] for every resolved recipe value that differs."""
    flat = [_flatten(r.recipe) for r in runs if r.recipe]
    if len(flat) != len(runs):
        return []
    keys = list(dict.fromkeys(k for f in flat for k in f))
    missing = object()
    rows = []
    for k in keys:
        vals = [f.get(k, missing) for f in flat]
        if any(v != vals[0] for v in vals):
            rows.append([k, *("-" if v is missing else str(v) for v in vals)])
    return rows


def _recipes_html(runs: Sequence[RunData]) -> str:
    if any(r.recipe is None for r in runs):
        return (
            '<p class="note">Not every run folder carries its recipe (stage checkpoints): '
            + ", ".join(escape(r.label) for r in runs if r.recipe is None)
            + ".</p>"
        )
    rows = recipe_differences(runs)
    if not rows:
        return '<p class="note">The resolved recipes are identical.</p>'
    return "<p>Every resolved recipe value (defaults included) that is not the same in all runs.</p>" + table(
        ["recipe key", *(r.label for r in runs)], rows, text_cols=tuple(range(len(runs) + 1))
    )


def _keys(runs: Sequence[RunData]) -> list[str]:
    keys: list[str] = []
    for r in runs:
        keys += [k for k in latency_keys(r.report) if k not in keys]
    return keys


def _link(r: RunData, out_dir: Path | None) -> str:
    """A list item linking run ``r``'s own report.html (relative to ``out_dir`` when given), or saying how to
    render it."""
    html = r.folder / "report.html" if r.folder else None
    if html is None or not html.is_file():
        return (
            f"<li>{escape(r.label)}: no report.html (render it with <code>distillprune report "
            f"{escape(str(r.folder))} --html</code>)</li>"
        )
    href = os.path.relpath(html, out_dir) if out_dir else html.as_uri()
    href = href if href.startswith((".", "/", "file:")) else f"./{href}"  # a folder 'javascript:x' is a path
    return f'<li><a href="{escape(href)}">{escape(r.label)}</a>: its full report</li>'


def render_compare_html(runs: Sequence[RunData], out_dir: Path | None = None) -> str:
    pairs = [(r.label, r.report) for r in runs]
    diffs = environment_differences(runs)
    warn = (
        (
            '<p class="flag">Measured differently, so absolute latencies do not compare: '
            + "; ".join(escape(d) for d in diffs)
            + ".</p>"
        )
        if diffs
        else ""
    )
    warn += "".join(f'<p class="flag">Note: {escape(n)}.</p>' for n in latency_notes(runs))
    figs = [
        figure(
            compare_svg(pairs, k),
            f"Top-1 (kNN top-1 for embedding models probed without a classifier) against measured latency, "
            f"{escape(latency_label(k))}: each run's stages joined in run order (square: its dense model, "
            "large dot: its final stage).",
            f"No run has a stage with both accuracy and {k} latency.",
        )
        for k in _keys(runs)
    ]
    overlay = warn + (
        f'<div class="grid">{"".join(figs)}</div>' if figs else '<p class="note">No run has measured latency.</p>'
    )
    links = [_link(r, out_dir) for r in runs]
    runs_html = (
        table(COLUMNS, compare_rows(runs), text_cols=(0, 1))
        + '<p class="note">Final = each run\'s last measured stage; speedups and MAC ratio against the '
        "run's own dense model.</p><ul>" + "".join(links) + "</ul>"
    )
    env_keys = list(dict.fromkeys(k for r in runs for k in r.report.environment))
    env_rows = [[k, *(_env(r, k) for r in runs)] for k in env_keys]
    sections = [
        ("overlay", "Accuracy vs measured latency", overlay),
        ("runs", "Runs", runs_html),
        ("recipes", "Recipe differences", _recipes_html(runs)),
        (
            "environment",
            "Environments",
            table(["", *(r.label for r in runs)], env_rows, text_cols=tuple(range(len(runs) + 1))),
        ),
    ]
    header = (
        f'<h1>distillprune: {len(runs)} runs compared</h1><p class="muted">'
        + ", ".join(f"<code>{escape(r.label)}</code> ({escape(r.report.recipe)})" for r in runs)
        + "</p>"
    )
    return page("distillprune compare", header, sections, "distillprune compare · self-contained page: no network.")


def _env(run: RunData, key: str) -> str:
    v = run.report.environment.get(key, "-")
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def write_compare(runs: Sequence[RunData], out: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise DistillpruneError(f"--out {out} is a folder; give the page's file name, e.g. {out / 'compare.html'}")
    _not_a_run_file(runs, out)
    return write_text(out, render_compare_html(runs, out.resolve().parent))


def _not_a_run_file(runs: Sequence[RunData], out: Path) -> None:
    """Refuse an ``--out`` that would overwrite a compared run's own files (report.json, run.log, its ONNX):
    inside a run folder the page may only be a new file or an earlier page (.html, not report.html)."""
    target = out.resolve()
    for r in runs:
        if r.folder is None or not target.is_relative_to(r.folder.resolve()):
            continue
        rel = target.relative_to(r.folder.resolve())
        if rel.parts and (rel.parts[0] in RESERVED or (target.exists() and target.suffix != ".html")):
            raise DistillpruneError(
                f"--out {out} would overwrite {rel} of the run {r.folder}; write the page elsewhere (e.g. compare.html)"
            )


def print_compare(runs: Sequence[RunData], wide: bool = False, console=None) -> None:
    """The runs side by side: the compact columns fitted to the terminal (at most 80 columns, run labels
    shortened with a footnote, numbers never wrapped), or every column with ``wide``."""
    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    console = console or Console()
    title = f"distillprune: {len(runs)} runs, final stage vs each run's dense model"
    if wide:
        t = Table(title=title)
        for c in COLUMNS:
            t.add_column(c, justify="left" if c in ("run", "recipe") else "right", overflow="fold")
        for row in compare_rows(runs):
            t.add_row(*(rich_escape(printable(c)) for c in row))  # text from report.json: never raw escapes
        console.print(t)
    else:
        width = min(console.width, 80)
        pick = [COLUMNS.index(c) for c, _ in COMPACT]
        data = [[row[i] for i in pick] for row in compare_rows(runs)]
        data, footnotes = fit_labels([h for _, h in COMPACT], data, [None] * len(data), width)
        console.print(compact_table(title, [h for _, h in COMPACT], data))
        for line in [*footnotes, "speedup: ORT bs1; real/MAC: best speedup / MAC ratio; --wide: all columns"]:
            console.print(rich_escape(printable(line)), highlight=False, width=width)
    for d in environment_differences(runs):
        console.print(f"[yellow]measured differently[/] {rich_escape(printable(d))}")
    for n in latency_notes(runs):
        console.print(f"[yellow]note[/] {rich_escape(printable(n))}")
