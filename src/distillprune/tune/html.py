"""``tune.html``: a search on one self-contained page (the report stack: ``report.page`` shell, matplotlib
figures as inline SVG, no network): trials on the accuracy-vs-measured-latency plane with their Pareto
front, parameter importances, per-trial validation curves, and every trial in a table."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from distillprune.core.io import write_text
from distillprune.report.page import cards, figure, page, table
from distillprune.report.plots import draw_front, latency_label
from distillprune.report.svg import colour, new_figure, styled, to_svg
from distillprune.tune.report import TuneReport


def _points(rep: TuneReport) -> list[tuple[int, float, float]]:
    return [
        (t.number, t.latency_ms, t.val_top1)
        for t in rep.trials
        if t.state == "COMPLETE" and t.latency_ms is not None and t.val_top1 is not None
    ]


@styled
def plane_svg(rep: TuneReport) -> str | None:
    """Validation top-1 against measured latency, one point per completed trial, the front dashed."""
    pts = _points(rep)
    if not pts:
        return None
    fig = new_figure(5.6, 4.2)
    ax = fig.add_subplot()
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=28, color=colour(1), zorder=3, label="trial")
    draw_front(ax, [(lat, acc) for _, lat, acc in pts], "Pareto front")
    for n, lat, acc in pts:
        ax.annotate(str(n), (lat, acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
    chosen = [p for p in pts if p[0] == rep.chosen]
    if chosen:
        ax.scatter([chosen[0][1]], [chosen[0][2]], s=110, facecolors="none", edgecolors=colour(6), lw=1.6, zorder=4)
        ax.scatter([], [], s=60, facecolors="none", edgecolors=colour(6), label=f"best.yaml (trial {rep.chosen})")
    ax.set_xlabel(f"measured latency, ms ({latency_label(rep.speed_key)})")
    ax.set_ylabel("validation top-1 %")
    ax.margins(x=0.12, y=0.15)
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    return to_svg(fig, "tune-plane", "validation top-1 of each trial against its measured latency")


@styled
def importance_svg(imp: dict[str, float]) -> str:
    names = list(imp)[::-1]
    fig = new_figure(5.6, 1.0 + 0.32 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [imp[n] for n in names], color=colour(1))
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("importance (share)")
    return to_svg(fig, "tune-importance", "parameter importances")


@styled
def curves_svg(rep: TuneReport) -> str | None:
    """Each trial's per-epoch validation value (its KD loss, or error), pruned trials dashed."""
    drawn = [t for t in rep.trials if t.curve]
    if not drawn:
        return None
    fig = new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    for i, t in enumerate(drawn):
        ls = "--" if t.state == "PRUNED" else "-"
        lw = 2.2 if t.number == rep.chosen else 1.0
        ax.plot(range(1, len(t.curve) + 1), t.curve, ls=ls, lw=lw, color=colour(i + 1), label=f"trial {t.number}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (all training stages of the run, in order)")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log" if min(min(t.curve) for t in drawn) > 0 else "linear")
    if len(drawn) <= 12:
        fig.legend(loc="outside lower center", ncols=4, frameon=False)
    return to_svg(fig, "tune-curves", "per-epoch validation value of each trial")


def _fmt(v: float | None, f: str) -> str:
    return "–" if v is None else format(v, f)


def _trials_table(rep: TuneReport) -> str:
    head = ["trial", "state", "validation top-1 %", "speedup", "latency ms", "test top-1 %", "values", "note"]
    rows, classes = [], []
    for t in rep.trials:
        note = t.pruned_at or ("Pareto-best" if t.number in rep.best else "")
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in t.params.items())
        rows.append(
            [
                t.number,
                t.state.lower(),
                _fmt(t.val_top1, ".2f"),
                _fmt(t.speedup, ".2f"),
                _fmt(t.latency_ms, ".4f"),
                _fmt(t.test_top1, ".2f"),
                params,
                note,
            ]
        )
        classes.append("chosen" if t.number == rep.chosen else "")
    return table(head, rows, classes, text_cols=(6, 7))


def _header(rep: TuneReport) -> str:
    chosen = rep.trial(rep.chosen) if rep.chosen is not None else None
    items = [("trials", str(len(rep.trials)))] + [(s.lower(), str(n)) for s, n in sorted(rep.counts.items())]
    if chosen is not None:
        items.append((f"validation top-1, trial {chosen.number}", _fmt(chosen.val_top1, ".2f") + "%"))
        if chosen.speedup is not None:
            items.append(("measured speedup", f"{chosen.speedup:.2f}x"))
        if chosen.test_top1 is not None:
            items.append(("test top-1 (read once)", f"{chosen.test_top1:.2f}%"))
    return (
        f"<h1>distillprune tune: {escape(rep.recipe)}</h1>"
        f"<p>objectives: {escape(' + '.join(rep.objectives))} · sampler {escape(rep.sampler)} · pruner "
        f"{escape(rep.pruner)} · budget {rep.budget_fraction:g} of the training data per trial · validation "
        f"split {rep.validation_split:g}</p><p><b>Hold-out:</b> {escape(rep.holdout)}</p>" + cards(items)
    )


def render_tune_html(rep: TuneReport) -> str:
    from distillprune import __version__

    imp = (
        figure(importance_svg(rep.importances), escape(rep.importance_note), "")
        if rep.importances
        else f'<p class="note">{escape(rep.importance_note)}</p>'
    )
    sections = [
        (
            "plane",
            "Trials: validation top-1 vs measured latency",
            figure(plane_svg(rep), "completed trials; the dashed line is their Pareto front", "no trial completed"),
        ),
        ("importance", "Parameter importances", imp),
        (
            "curves",
            "Per-trial validation curves",
            figure(curves_svg(rep), "pruned trials dashed; best.yaml's trial thick", "no epoch was recorded"),
        ),
        ("trials", "Every trial", _trials_table(rep)),
    ]
    footer = f"distillprune {escape(__version__)} · tune.json is the source of this page · no network, inline SVG."
    return page(f"distillprune tune: {rep.recipe}", _header(rep), sections, footer)


def write_tune_html(rep: TuneReport, folder: str | Path) -> Path:
    return write_text(Path(folder) / "tune.html", render_tune_html(rep))
