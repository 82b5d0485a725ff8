"""Training curves of each training stage, from ``metrics.jsonl`` (one record per epoch).

Records are tagged ``"<index>:<stage>"`` or ``"<index>:<stage>/<phase>"`` (``2:prune/step1``,
``4:distill/gen2``); a stage's phases are laid end to end on one epoch axis. A resumed run logs
the epochs it repeats again: the last record of an epoch wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from matplotlib.ticker import MaxNLocator

from distillprune.report.svg import new_figure, styled, to_svg

PANELS = (
    ("loss", ("loss",), "training loss"),
    ("accuracy %", ("train_acc", "test_acc"), "top-1 %"),
    ("learning rate", ("lr",), "lr"),
)
SERIES_STYLE = {"loss": "#0072B2", "train_acc": "#E69F00", "test_acc": "#009E73", "lr": "#555555"}
SERIES_LABEL = {"loss": "loss", "train_acc": "train", "test_acc": "test", "lr": "lr"}


@dataclass
class Curve:
    stage: str  # "2:prune"
    x: list[float] = field(default_factory=list)  # epochs, cumulative over the stage's phases
    series: dict[str, list[float | None]] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)  # (phase name, x where it starts)
    checks: list[tuple[float, float]] = field(default_factory=list)  # keep-best: (x, held-out top-1)
    kept: list[tuple[float, float]] = field(default_factory=list)  # keep-best: the point each run ended on


def _stage_key(stage: str) -> tuple[int, str]:
    m = re.match(r"(\d+):", stage)
    return (int(m.group(1)) if m else 10**9, stage)


def training_curves(records: list[dict[str, Any]]) -> list[Curve]:
    """One Curve per training stage, in stage order."""
    last: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in records:
        if isinstance(r.get("tag"), str) and isinstance(r.get("step"), (int, float)):
            last[(r["tag"], r["step"])] = r
    phases: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (tag, _), r in last.items():
        stage, _, phase = tag.partition("/")
        phases.setdefault(stage, {}).setdefault(phase, []).append(r)
    curves = []
    for stage in sorted(phases, key=_stage_key):
        c = Curve(stage)
        offset = 0.0
        for phase, recs in phases[stage].items():
            recs.sort(key=lambda r: r["step"])
            c.phases.append((phase, offset))
            for r in recs:
                c.x.append(offset + float(r["step"]))
                for _, keys, _ in PANELS:
                    for k in keys:
                        v = r.get(k)
                        c.series.setdefault(k, []).append(float(v) if isinstance(v, (int, float)) else None)
                _held_out(c, r, offset)
            offset += float(recs[-1]["step"])
        c.series = {k: v for k, v in c.series.items() if any(x is not None for x in v)}
        curves.append(c)
    return curves


def _held_out(c: Curve, r: dict[str, Any], offset: float) -> None:
    """A run's keep-best checks (its last record holds them), placed on the stage's epoch axis."""
    first = None
    for p in r.get("checks") or []:
        if (
            isinstance(p, dict)
            and isinstance(p.get("val_top1"), (int, float))
            and isinstance(p.get("epoch"), float | int)
        ):
            first = p["epoch"] if first is None else first
            c.checks.append((offset + float(p["epoch"]) - first, float(p["val_top1"])))
    kept = r.get("kept")
    if first is not None and isinstance(kept, dict) and isinstance(kept.get("val_top1"), (int, float)):
        at = kept.get("epoch", first)
        c.kept.append((offset + float(first if at is None else at) - first, float(kept["val_top1"])))


def _panel(ax, c: Curve, title: str, keys: tuple[str, ...], ylabel: str) -> None:
    drawn = False
    if "test_acc" in keys and c.checks:  # the fine-tune's held-out checks and the point it kept
        ax.plot([p[0] for p in c.checks], [p[1] for p in c.checks], ":.", ms=3, lw=1, color="#CC79A7", label="held-out")
        ax.plot([p[0] for p in c.kept], [p[1] for p in c.kept], "*", ms=9, color="#CC79A7", label="kept")
        drawn = True
    for k in keys:
        if k in c.series:
            pts = [(x, y) for x, y in zip(c.x, c.series[k], strict=True) if y is not None]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "-o",
                ms=2.5,
                lw=1.2,
                color=SERIES_STYLE[k],
                label=SERIES_LABEL[k],
            )
            drawn = True
    for _, x0 in c.phases[1:]:
        ax.axvline(x0 + 0.5, color="#999999", ls=":", lw=0.8)
    if len(c.phases) > 1:
        for i, (name, x0) in enumerate(c.phases):
            ax.annotate(
                name,
                (c.x[0] if i == 0 else x0 + 0.5, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -2),
                textcoords="offset points",
                fontsize=6.5,
                color="#666666",
                va="top",
                ha="left",
            )
    if not drawn:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="#888888")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{c.stage}: {title}", loc="left")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("epoch")
    if len(keys) > 1 and drawn:
        ax.legend(frameon=False, loc="lower right")


@styled
def curves_svg(records: list[dict[str, Any]]) -> str | None:
    """Loss, accuracy (train/test) and learning rate per epoch; one row of panels per training stage."""
    curves = training_curves(records)
    if not curves:
        return None
    fig = new_figure(9.6, 0.3 + 2.0 * len(curves))
    axes = fig.subplots(len(curves), len(PANELS), squeeze=False)
    for row, c in zip(axes, curves, strict=True):
        for ax, (title, keys, ylabel) in zip(row, PANELS, strict=True):
            _panel(ax, c, title, keys, ylabel)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    return to_svg(fig, "curves", "training curves: loss, accuracy and learning rate per epoch of each training stage")
