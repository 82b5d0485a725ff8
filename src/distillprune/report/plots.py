"""Figures of a report (accuracy vs measured latency, per-stage bars) and of several runs (overlay).

Every figure is drawn from report data only (``CompressionReport``, plain dicts), so any run
folder renders, and returns an inline ``<svg>`` string (see ``report.svg``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distillprune.errors import DistillpruneError
from distillprune.report.report import QUALITY, CompressionReport, StageResult
from distillprune.report.svg import colour, new_figure, styled, to_svg

CANDIDATES_LABEL = "candidates: top-1 estimated on held-out training images (optimistic), before fine-tuning"
CANDIDATES_LEGEND = "candidates: top-1 estimated on training\nimages (optimistic), before fine-tuning"
#: the column of a plan's candidates: the teacher has fitted its training images, so the estimate is optimistic
EST_TOP1 = "est. top-1 % (training images, optimistic)"


def latency_label(key: str) -> str:
    """'ort_bs1' -> 'ONNX Runtime CPU, batch 1'; 'gpu_graph_bs256' -> 'GPU (CUDA graph), batch 256'."""
    m = re.fullmatch(r"(ort|gpu_eager|gpu_graph)_bs(\d+)", key)
    if not m:
        return key
    kind = {"ort": "ONNX Runtime CPU", "gpu_eager": "GPU (eager)", "gpu_graph": "GPU (CUDA graph)"}[m.group(1)]
    return f"{kind}, batch {m.group(2)}"


def short_latency_label(key: str) -> str:
    """'ort_bs1' -> 'ORT CPU bs1', 'gpu_graph_bs256' -> 'GPU graph bs256'; for panel titles."""
    m = re.fullmatch(r"(ort|gpu_eager|gpu_graph)_bs(\d+)", key)
    if not m:
        return key
    return {"ort": "ORT CPU", "gpu_eager": "GPU eager", "gpu_graph": "GPU graph"}[m.group(1)] + f" bs{m.group(2)}"


def latency_keys(report: CompressionReport) -> list[str]:
    """Every latency measured on a stage: ONNX Runtime first, then by batch size."""
    keys = {k for s in report.stages if s.measured for k in s.latency_ms}

    def order(k: str) -> tuple[int, int, str]:
        m = re.search(r"_bs(\d+)$", k)
        return (0 if k.startswith("ort_") else 1, int(m.group(1)) if m else 0, k)

    return sorted(keys, key=order)


def stage_label(s: StageResult) -> str:
    return s.name + (f" [{s.artefact}]" if s.artefact else "")


def latency_spread(s: StageResult, key: str) -> tuple[float, float] | None:
    """(min, max) ms implied by the spread of the stage's paired speedups (``latency_spread`` holds the min and
    max speedup over the pairs timed back to back with the dense model)."""
    spread = getattr(s, "latency_spread", None) or {}
    pair = spread.get(key) if isinstance(spread, dict) else None
    sp, ms = (s.speedups or {}).get(key), s.latency_ms.get(key)
    if (
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(v, (int, float)) and v > 0 for v in pair)
        and sp
        and ms
    ):
        return ms * sp / float(pair[1]), ms * sp / float(pair[0])
    return None


def draw_front(ax: Any, pts: Sequence[tuple[float, float]], label: str, **kw: Any) -> None:
    """The Pareto front of ``(latency, accuracy)`` points as a dashed step line (``gid="front"``), when it has
    more than one point."""
    front = pareto_front(list(pts))
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            drawstyle="steps-post",
            ls="--",
            color="#555555",
            lw=1,
            label=label,
            gid="front",
            **kw,
        )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower ms, higher top-1),
    ordered by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any((lo <= lat and ao >= acc) and (lo < lat or ao > acc) for lo, ao in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


@dataclass
class Plan:
    """A target search's plan as the prune stage stored it (``details["plan"]``), for plotting."""

    stage: str
    target: dict[str, Any]
    achieved: float | None
    candidates: list[dict[str, Any]]

    def target_text(self) -> str:
        t = self.target
        if t.get("latency_speedup"):
            return f"{t['latency_speedup']:g}x measured speedup at batch {t.get('batch_size', 1)}"
        if t.get("macs_ratio"):
            return f"{t['macs_ratio']:g}x fewer MACs"
        return ", ".join(f"{k}={v}" for k, v in t.items()) or "not recorded"


def plans(report: CompressionReport) -> list[Plan]:
    """The plans of the report's prune stages; a plan whose target is not a mapping of numbers is one
    ``DistillpruneError`` line (report.json is data: it may have been edited)."""
    out = []
    for s in report.stages:
        p = s.details_dict().get("plan")
        if isinstance(p, dict):
            cands = [c for c in p.get("candidates") or [] if isinstance(c, dict)]
            # older plans name no ``achieved``: their measured speedup, else their MAC ratio
            achieved = p["achieved"] if "achieved" in p else (p.get("speedup") or p.get("macs_ratio"))
            out.append(Plan(s.name, _target(p.get("target"), s.name), achieved if _number(achieved) else None, cands))
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _target(t: Any, stage: str) -> dict[str, Any]:
    if t is None:
        return {}
    numeric = ("latency_speedup", "macs_ratio", "batch_size")
    if not isinstance(t, dict) or any(t.get(k) is not None and not _number(t[k]) for k in numeric):
        raise DistillpruneError(
            f"report.json: stage {stage!r:.60}: details.plan.target is {t!r:.80}; expected a mapping of numbers "
            f"({', '.join(numeric)})"
        )
    return dict(t)


def target_latency(report: CompressionReport, plan: Plan, key: str) -> float | None:
    """The latency the target asks for on ``key``: dense latency / target speedup, at the target's batch."""
    sp = plan.target.get("latency_speedup")
    base = report.baseline
    if not sp or base is None or key != f"ort_bs{plan.target.get('batch_size', 1)}" or key not in base.latency_ms:
        return None
    return base.latency_ms[key] / float(sp)


def _points(report: CompressionReport, key: str) -> list[tuple[StageResult, float, float]]:
    """(stage, latency on ``key``, quality) of every measured stage with both: the quality is top-1, or an
    embedding model's kNN top-1 (``report.quality_key``)."""
    q = report.quality_key
    return [
        (s, s.latency_ms[key], s.quality(q))  # type: ignore[misc]  # None filtered below
        for s in report.stages
        if s.measured and s.quality(q) is not None and key in s.latency_ms
    ]


def _tag(report: CompressionReport) -> str:
    """'' for top-1, else the short name of the figure that stands for it ('kNN ')."""
    return "" if report.quality_key == "accuracy" else f"{QUALITY[report.quality_key][1]} "


def quality_label(reports: Sequence[CompressionReport]) -> str:
    """The y axis of reports plotted together: "top-1 %", "kNN top-1 %", or both when they are mixed."""
    labels = list(dict.fromkeys(QUALITY[r.quality_key][0] for r in reports))
    return " / ".join(labels) + " %"


NICE_SPEEDUPS = (0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 100)


def speedup_ticks(base_ms: float, lo: float, hi: float, min_gap: float = 0.06) -> list[float]:
    """Speedups (dense ms / ms) to label on a latency axis spanning [lo, hi] ms: round values, no two
    closer than ``min_gap`` of the axis width (speedup is 1/x, so round values crowd at low latency)."""
    out: list[float] = []
    last = None
    for sp in sorted(NICE_SPEEDUPS, reverse=True):
        x = base_ms / sp
        if not lo - 1e-9 * abs(hi - lo) <= x <= hi + 1e-9 * abs(hi - lo):
            continue
        if last is None or (x - last) / (hi - lo) >= min_gap:
            out.append(sp)
            last = x
    return out


def _speedup_axis(ax, base_ms: float) -> None:
    """A top axis in speedup over the dense model (dense ms / ms; the map is its own inverse)."""
    import numpy as np

    def f(x):
        x = np.asarray(x, dtype=float)
        return base_ms / np.where(np.abs(x) < 1e-9, 1e-9, x)

    lo, hi = ax.get_xlim()
    top = ax.secondary_xaxis("top", functions=(f, f))
    top.set_xticks(speedup_ticks(base_ms, lo, hi), [f"{t:g}x" for t in speedup_ticks(base_ms, lo, hi)])
    top.set_xlabel("speedup over the dense model", fontsize=8)
    top.grid(False)


@styled
def accuracy_latency_svg(report: CompressionReport, key: str) -> str | None:
    """Top-1 against measured latency: every stage, its Pareto front, the target and the search's candidates."""
    pts = _points(report, key)
    if not pts:
        return None
    fig = new_figure(5.6, 4.0 + 0.16 * (len(pts) + 4 * len(plans(report))))
    ax = fig.add_subplot()
    stage_ix = {s.index: i for i, s in enumerate(s for s in report.stages if s.measured)}
    for s, lat, acc in pts:
        spread = latency_spread(s, key)
        xerr = None if spread is None else [[max(lat - spread[0], 0)], [max(spread[1] - lat, 0)]]
        dense = s is report.baseline
        eb = ax.errorbar(
            [lat],
            [acc],
            xerr=xerr,
            fmt="s" if dense else "o",
            ms=8 if dense else 7,
            color=colour(stage_ix[s.index]),
            capsize=3,
            zorder=4,
            label=stage_label(s) + (" (dense)" if dense else ""),
        )
        eb.lines[0].set_gid(f"stage-{s.index}")
    draw_front(ax, [(lat, acc) for _, lat, acc in pts], "Pareto front (stages)", zorder=2)
    _draw_candidates(ax, report, key)
    ax.set_xlabel(f"measured latency, ms ({latency_label(key)})")
    ax.set_ylabel(quality_label([report]))
    ax.margins(x=0.12, y=0.15)
    base = report.baseline
    if base is not None and key in base.latency_ms:
        _speedup_axis(ax, base.latency_ms[key])
    handles, labels = ax.get_legend_handles_labels()  # stages first, in run order; then the other series
    stage_labels = [stage_label(s) + (" (dense)" if s is report.baseline else "") for s, _, _ in pts]
    order = sorted(
        range(len(labels)),
        key=lambda i: stage_labels.index(labels[i]) if labels[i] in stage_labels else len(stage_labels) + i,
    )
    fig.legend(
        [handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=2, frameon=False
    )
    what = QUALITY[report.quality_key][0]
    return to_svg(fig, f"pareto-{key}", f"{what} against measured latency, {latency_label(key)}")


def _draw_candidates(ax, report: CompressionReport, key: str) -> None:
    all_plans = plans(report)
    for n, plan in enumerate(all_plans):
        pts = [
            (c["latency_ms"][key], c["est_top1"], bool(c.get("chosen")))
            for c in plan.candidates
            if isinstance(c.get("latency_ms"), dict)
            and _number(c["latency_ms"].get(key))
            and _number(c.get("est_top1"))
        ]
        suffix = f" ({plan.stage})" if len(all_plans) > 1 else ""
        if pts:
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="^",
                s=22,
                facecolors="none",
                edgecolors="#777777",
                linewidths=0.9,
                zorder=3,
                label=CANDIDATES_LEGEND + suffix,
                gid=f"candidates-{n}",
            )
            chosen = [p for p in pts if p[2]]
            if chosen:
                ax.scatter(
                    [p[0] for p in chosen],
                    [p[1] for p in chosen],
                    marker="*",
                    s=110,
                    color="#D55E00",
                    zorder=5,
                    label="chosen candidate" + suffix,
                    gid=f"chosen-{n}",
                )
        x = target_latency(report, plan, key)
        if x is not None:
            ax.axvline(
                x,
                color="#D55E00",
                ls=":",
                lw=1.4,
                zorder=1,
                gid=f"target-{n}",
                label=f"target: {plan.target['latency_speedup']:g}x ({x:.3g} ms)" + suffix,
            )


def _fmt_count(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _fmt_bytes(v: float) -> str:
    return f"{v / 2**20:.3g} MiB" if v >= 2**20 else f"{v / 2**10:.3g} KiB"


def _bar_panels(
    report: CompressionReport,
) -> list[tuple[str, Callable[[StageResult], float | None], Callable[[float], str]]]:
    base = report.baseline
    panels: list = [
        ("parameters", lambda s: s.params, _fmt_count),
        ("MACs", lambda s: s.macs, _fmt_count),
        ("ONNX file size", lambda s: s.onnx_bytes, _fmt_bytes),
    ]
    for key in latency_keys(report):
        panels.append(
            (f"{short_latency_label(key)} latency, ms", lambda s, k=key: s.latency_ms.get(k), lambda v: f"{v:.3g}")
        )
    q = report.quality_key
    dense = None if base is None else base.quality(q)
    if dense is not None:
        panels.append(
            (
                f"{QUALITY[q][0]} change vs dense, pp",
                lambda s: None if s.quality(q) is None else s.quality(q) - dense,
                lambda v: f"{v:+.2f}",
            )
        )
    return panels


@styled
def stage_bars_svg(report: CompressionReport) -> str | None:
    """Small multiples, one per quantity, one bar per measured stage (same colours as the scatter)."""
    stages = [s for s in report.stages if s.measured]
    if not stages:
        return None
    panels = _bar_panels(report)
    cols = 3
    rows = -(-len(panels) // cols)
    fig = new_figure(9.6, 0.45 + rows * (0.55 + 0.26 * len(stages)))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = [stage_label(s) for s in stages]
    for ax, (title, get, fmt) in zip(axes, panels, strict=False):
        vals = [get(s) for s in stages]
        ys = list(range(len(stages)))
        ax.barh(ys, [v or 0 for v in vals], color=[colour(i) for i in ys], height=0.65)
        ax.set_yticks(ys, labels if ax in axes[::cols] else [""] * len(ys))
        ax.invert_yaxis()
        ax.set_title(title, loc="left")
        ax.grid(axis="y", visible=False)
        ax.axvline(0, color="#333333", lw=0.8)
        for y, v in zip(ys, vals, strict=True):
            ax.annotate(
                "n/a" if v is None else fmt(v),
                (v or 0, y),
                xytext=(3 if (v or 0) >= 0 else -3, 0),
                textcoords="offset points",
                va="center",
                ha="left" if (v or 0) >= 0 else "right",
                fontsize=7,
            )
        ax.margins(x=0.3)
        ax.xaxis.set_visible(False)  # the bars carry their values
        ax.spines["bottom"].set_visible(False)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return to_svg(fig, "stage-bars", "per-stage parameters, MACs, file size, latency and accuracy change")


@styled
def compare_svg(runs: Sequence[tuple[str, CompressionReport]], key: str) -> str | None:
    """Several runs on one accuracy-vs-latency plane: each run's stages joined in order, dense as a
    square, final as a large dot; the dashed line is the Pareto front over every stage of every run."""
    fig = new_figure(7.2, 4.2 + 0.18 * (len(runs) + 1))
    ax = fig.add_subplot()
    everything: list[tuple[float, float]] = []
    for i, (label, rep) in enumerate(runs):
        pts = _points(rep, key)
        if not pts:
            continue
        c = colour(i + 1)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-o", color=c, ms=3.5, lw=1, alpha=0.8, zorder=3)
        s0, lat0, acc0 = pts[0]
        ax.plot([lat0], [acc0], "s", color=c, ms=7, mfc="white", zorder=4)
        _, lat, acc = pts[-1]
        ax.plot(
            [lat],
            [acc],
            "o",
            color=c,
            ms=9,
            zorder=5,
            label=f"{label} (final {_tag(rep)}{acc:.2f}%, {lat:.3g} ms)",
        )
        everything += [(p[1], p[2]) for p in pts]
    if not everything:
        return None
    front = pareto_front(everything)
    if len(front) > 1:
        ax.plot(
            [everything[i][0] for i in front],
            [everything[i][1] for i in front],
            drawstyle="steps-post",
            ls="--",
            color="#555555",
            lw=1,
            zorder=2,
            label="Pareto front (all stages of all runs)",
        )
    ax.set_xlabel(f"measured latency, ms ({latency_label(key)})")
    ax.set_ylabel(quality_label([r for _, r in runs]))
    ax.margins(x=0.12, y=0.15)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=1, frameon=False)
    what = quality_label([r for _, r in runs]).removesuffix(" %")
    return to_svg(fig, f"compare-{key}", f"runs compared: {what} against measured latency, {latency_label(key)}")
