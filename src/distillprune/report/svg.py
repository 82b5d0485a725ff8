"""Matplotlib figures as inline SVG for a self-contained HTML page.

No pyplot: figures are ``matplotlib.figure.Figure`` objects rendered by the SVG backend, so a
user's interactive backend and global figure state are never touched. Text is drawn as glyph
paths (matplotlib's default ``svg.fonttype``), so the page needs no font files. Several SVGs in
one document share an id namespace, so every id a figure defines is prefixed with the figure's
own name.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from matplotlib import rc_context
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

P = ParamSpec("P")
R = TypeVar("R")

# One colour per stage, in stage order, shared by every figure of a page (Okabe-Ito: colour-blind safe).
PALETTE = ["#000000", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"]
RC: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "svg.fonttype": "path",
    "svg.hashsalt": "distillprune",
    "text.parse_math": False,  # stage names and keys come from report.json: "$...$" is text, not mathtext
}  # fixed salt: the same report renders to the same bytes


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a figure-drawing function inside the report's matplotlib style (rcParams are read lazily,
    at axes, tick and text creation and at save time, so the whole drawing happens inside it)."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width_in: float, height_in: float, **kwargs: Any) -> Figure:
    return Figure(figsize=(width_in, height_in), layout="constrained", **kwargs)


_ID = re.compile(r'\bid="([^"]+)"')
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


def safe_id(text: str) -> str:
    """``text`` as an XML/HTML id: letters, digits, ``_ . -``; anything else (markup, quotes, spaces from a
    report's keys) becomes ``_``."""
    return _UNSAFE_ID.sub("_", str(text)) or "_"


def to_svg(fig: Figure, name: str, label: str) -> str:
    """``fig`` as an ``<svg>`` element: ids prefixed with ``name`` (made a safe id: names hold report keys),
    scalable, labelled for screen readers."""
    name = safe_id(name)
    buf = io.StringIO()
    with rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "distillprune"})
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: this goes inside HTML
    ids = set(_ID.findall(text))
    if ids:
        alternation = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
        text = re.sub(rf'(id="|#)({alternation})(?=["\)])', lambda m: f"{m.group(1)}{name}-{safe_id(m.group(2))}", text)
    width = re.search(r'<svg[^>]*?\bwidth="([\d.]+)pt"', text)
    max_w = f"max-width:{float(width.group(1)) * 4 / 3:.0f}px;" if width else ""
    text = re.sub(r'(<svg[^>]*?)\s(width|height)="[^"]*"', r"\1", text, count=1)
    text = re.sub(r'(<svg[^>]*?)\s(width|height)="[^"]*"', r"\1", text, count=1)
    attrs = f'class="fig" data-figure="{escape(name)}" role="img" aria-label="{escape(label)}" style="{max_w}"'
    return text.replace("<svg", f"<svg {attrs}", 1)
