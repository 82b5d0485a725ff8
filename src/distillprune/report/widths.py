"""Per-layer widths before/after: what pruning cut, from the ``widths`` each measured stage recorded.

A *width state* is a distinct set of layer widths; consecutive stages that changed nothing (a
fine-tune after a prune) share one. A layer missing from a later state was removed — with its
residual block when the block is in a stage's ``details["removed_blocks"]`` — or factorised (a
low-rank factorisation turns ``conv`` into ``conv.0`` + ``conv.1``, which show as added layers).
"""

from __future__ import annotations

from dataclasses import dataclass

from distillprune.report.report import CompressionReport
from distillprune.report.svg import colour, new_figure, styled, to_svg

REMOVED = "#D55E00"


@dataclass
class WidthState:
    stage: str  # the first stage that had these widths
    colour: str
    widths: dict[str, int]


@dataclass
class LayerRow:
    name: str
    widths: list[int | None]  # one per WidthState; None: the layer does not exist there
    status: str  # unchanged | narrowed | widened | removed | removed block | factorised | added
    block: str | None = None  # the removed block it belonged to


def width_states(report: CompressionReport) -> list[WidthState]:
    measured = [s for s in report.stages if s.measured]
    out: list[WidthState] = []
    for i, s in enumerate(measured):
        if s.widths and (not out or s.widths != out[-1].widths):
            out.append(WidthState(s.name, "#b8b8b8" if not out else colour(i), dict(s.widths)))
    return out


def removed_blocks(report: CompressionReport) -> list[str]:
    blocks = [b for s in report.stages for b in s.details_dict().get("removed_blocks") or [] if isinstance(b, str)]
    return list(dict.fromkeys(blocks))


def _layer_order(states: list[WidthState]) -> list[str]:
    """Every layer of every state in model order: a layer new in a later state (a low-rank factor)
    goes right before the next layer that state shares with the earlier ones."""
    order: list[str] = []
    for st in states:
        pending: list[str] = []
        for name in st.widths:
            if name not in order:
                pending.append(name)
            elif pending:
                at = order.index(name)
                order[at:at] = pending
                pending = []
        order += pending
    return order


def _factorised(name: str, widths: dict[str, int]) -> bool:
    return name not in widths and any(n.startswith(name + ".") for n in widths)


def _status(name: str, ws: list[int | None], later: set[str], blocks: list[str]) -> tuple[str, str | None]:
    block = next((b for b in blocks if name == b or name.startswith(b + ".")), None)
    if ws[0] is None:
        return "added", None
    if ws[-1] is None:
        if block is not None:
            return "removed block", block
        if any(n.startswith(name + ".") for n in later):
            return "factorised", None
        return "removed", None
    if ws[-1] < ws[0]:
        return "narrowed", None
    return ("widened" if ws[-1] > ws[0] else "unchanged"), None


def layer_rows(report: CompressionReport) -> tuple[list[WidthState], list[LayerRow]]:
    states = width_states(report)
    blocks = removed_blocks(report)
    later = set(states[-1].widths) if states else set()
    rows = []
    for name in _layer_order(states):
        ws = [st.widths.get(name) for st in states]
        status, block = _status(name, ws, later, blocks)
        rows.append(LayerRow(name, ws, status, block))
    return states, rows


def _draw_bars(ax, states: list[WidthState], rows: list[LayerRow]) -> None:
    n = len(states)
    h = 0.8 / n
    top = max((w for r in rows for w in r.widths if w), default=1)
    for j, st in enumerate(states):
        ys = [i - 0.4 + h * (j + 0.5) for i in range(len(rows))]
        vals = [r.widths[j] for r in rows]
        ax.barh(
            ys,
            [v or 0 for v in vals],
            height=h * 0.92,
            color=st.colour,
            label=f"{st.stage}" + (" (dense)" if j == 0 else ""),
        )
        for y, v, r in zip(ys, vals, rows, strict=True):
            if v is None and _factorised(r.name, st.widths):
                ax.text(top * 0.01, y, "factorised (see .0/.1)", color="#666666", va="center", fontsize=6.5)
            elif v is None and any(w is not None for w in r.widths[:j]):
                ax.plot([top * 0.01], [y], marker="x", color=REMOVED, ms=5, mew=1.4)
                ax.text(top * 0.03, y, "removed", color=REMOVED, va="center", fontsize=6.5)
            elif v is not None:
                kept = f" ({v / r.widths[0]:.0%})" if j and r.widths[0] and v != r.widths[0] else ""
                ax.text(v + top * 0.01, y, f"{v}{kept}", va="center", fontsize=6.5)


@styled
def widths_svg(report: CompressionReport) -> str | None:
    """Horizontal bars, one group per Conv/Linear layer (model order), one bar per width state."""
    states, rows = layer_rows(report)
    if not rows:
        return None
    fig = new_figure(7.4, 0.9 + len(rows) * (0.09 + 0.12 * len(states)))
    ax = fig.add_subplot()
    _draw_bars(ax, states, rows)
    ys = list(range(len(rows)))
    ax.set_yticks(ys, [r.name + ("  [block removed]" if r.block else "") for r in rows])
    for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
        if r.status in ("removed", "removed block"):
            tick.set_color(REMOVED)
    for b in dict.fromkeys(r.block for r in rows if r.block):
        idx = [i for i, r in enumerate(rows) if r.block == b]
        ax.axhspan(min(idx) - 0.5, max(idx) + 0.5, color=REMOVED, alpha=0.08, lw=0)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("output channels (Conv) / output features (Linear)")
    ax.margins(x=0.18)
    ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return to_svg(fig, "widths", "per-layer widths before and after compression")
