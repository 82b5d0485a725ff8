"""Render a CompressionReport: Markdown table, console table (rich). Nothing here computes results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillprune.core.io import write_text
from distillprune.errors import printable
from distillprune.report.report import LOAD_CHECKS, QUALITY, CompressionReport, StageResult

COLUMNS = [
    "stage",
    "top-1 %",
    "Δ top-1 pp",
    "params",
    "MACs",
    "file size",
    "size gain",
    "ORT bs1 ms",
    "ORT bs32 ms",
    "speedup bs1",
    "speedup bs32",
    "stage speedup bs1",
    "MAC ratio",
    "realised/MAC",
]


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


METRICS = {
    "cosine": "cosine to teacher",
    "top10_overlap": "top-10 overlap %",
    "knn_top1": "kNN top-1 %",
    "linear_top1": "linear probe top-1 %",
}
PERCENT = {"knn_top1", "linear_top1"}  # metrics stored in % (the others are fractions)


def metric_keys(report: CompressionReport) -> list[str]:
    """Quality metrics some stage reports (embedders: cosine to the teacher, top-10 retrieval overlap; a probe:
    kNN and linear-probe top-1), but the one that stands in the top-1 columns (``report.quality_key``)."""
    key = report.quality_key
    return list(dict.fromkeys(k for s in report.stages for k in s.metrics if k != key))


def renamed(report: CompressionReport) -> dict[str, str]:
    """Headers of the top-1 columns when the report's quality is another figure (an embedding model's kNN
    top-1), the compact table's short header included."""
    key = report.quality_key
    if key == "accuracy":
        return {}
    label, short = QUALITY[key]
    return {"top-1 %": f"{label} %", "Δ top-1 pp": f"Δ {label} pp", "top-1": short, "Δ pp": f"Δ {short} pp"}


def columns(report: CompressionReport) -> list[str]:
    names = renamed(report)
    return [names.get(c, c) for c in COLUMNS] + [METRICS.get(k, k) for k in metric_keys(report)]


def rows(report: CompressionReport) -> list[list[str]]:
    """One row per measured stage; Δ top-1, size gain and stage speedup are relative to the previous row."""
    out = []
    prev: StageResult | None = None
    key = report.quality_key  # top-1, or an embedding model's kNN top-1
    for s in report.stages:
        if not s.measured:
            continue
        sp1, sp32 = report.speedup(s, "ort_bs1"), report.speedup(s, "ort_bs32")
        mr = report.mac_ratio(s)
        best = max((v for v in (sp1, sp32) if v is not None), default=None)
        quality = s.quality(key)
        delta = None
        if prev is not None and prev.quality(key) is not None and quality is not None:
            delta = quality - prev.quality(key)  # type: ignore[operator]
        prev_sp = None if prev is None else report.speedup(prev, "ort_bs1")
        stage_sp = None if prev is None or sp1 is None or prev_sp is None else sp1 / prev_sp
        out.append(
            [
                s.name + (f" [{s.artefact}]" if s.artefact else ""),
                "-" if quality is None else f"{quality:.2f}",
                "-" if delta is None else f"{delta:+.2f}",
                _fmt_int(s.params),
                _fmt_int(s.macs),
                _fmt_bytes(s.onnx_bytes),
                "-" if prev is None else _x(_ratio(prev.onnx_bytes, s.onnx_bytes)),
                _ms(s, "ort_bs1"),
                _ms(s, "ort_bs32"),
                _x(sp1),
                _x(sp32),
                _x(stage_sp),
                _x(mr),
                "-" if best is None or not mr else f"{best / mr:.2f}",
            ]
            + [_metric(s, k) for k in metric_keys(report)]
        )
        prev = s
    return out


def _metric(s: StageResult, key: str) -> str:
    v = s.metrics.get(key)
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if key == "top10_overlap" else (f"{v:.2f}" if key in PERCENT else f"{v:.4f}")


def _ms(s: StageResult, key: str) -> str:
    return f"{s.latency_ms[key]:.3f}" if key in s.latency_ms else "-"


def render_markdown(report: CompressionReport) -> str:
    env = report.environment
    lines = [
        f"# distillprune report: {report.recipe}",
        "",
        f"Latency: ONNX Runtime {env.get('onnxruntime', '?')} CPU provider, "
        f"{env.get('ort_threads', '?')} intra-op thread(s), median of timed windows; "
        f"machine: {env.get('cpu_model') or env.get('processor', '?')} ({env.get('cpu_count', '?')} cores), "
        f"torch {env.get('torch', '?')}.",
        "Speedups and MAC ratios are relative to the dense model (the first measured row), each stage "
        "timed back to back with it (median of pairs; a stage that kept the architecture reuses the "
        "previous timing); Δ top-1, size gain and stage speedup are relative to the previous row. A row "
        "marked [file] measures that deployed file (int8 ONNX, packed clustered weights) instead of the "
        "float model's ONNX.",
        "",
        *_sequence_note(env),
        "| " + " | ".join(columns(report)) + " |",
        "|" + "---|" * len(columns(report)),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    flags = flag_lines(report)
    if flags:
        lines += ["", "## Flags", ""] + [f"- **{n}**: {f}" for n, f in flags]
    details = [(s.name, s.details_dict()) for s in report.stages if s.details]
    if details:
        lines += ["", "## Stage details", ""]
        for n, d in details:
            shown = {k: v for k, v in d.items() if v not in (None, [], {})}
            lines.append(f"- **{n}**: " + "; ".join(f"{k}: {_short(v)}" for k, v in shown.items()))
    return "\n".join(lines) + "\n"


def load_note(report: CompressionReport, s: StageResult) -> str | None:
    """How busy the machine was while ``s`` was timed (``StageResult.load``), or None when the report does not
    say (written before it was recorded, or timed where there is no /proc/loadavg)."""
    try:
        (b1, br), (a1, ar) = ((s.load[k]["load1"], s.load[k]["runnable"]) for k in ("before", "after"))
    except (KeyError, TypeError, ValueError):
        return None
    cores = report.environment.get("cpu_count")
    on = f" for {cores} cores" if isinstance(cores, int) else ""
    return (
        f"machine load while timing: 1-min load average {b1:.2f} before, {a1:.2f} after; "
        f"{br:.0f} then {ar:.0f} runnable processes{on} (the timing one included)"
    )


def flag_lines(report: CompressionReport) -> list[tuple[str, str]]:
    """(stage, text) for every flag, each flagged stage's timing followed by the machine's load while it ran."""
    out = []
    for s in report.stages:
        out += [(s.name, f) for f in s.flags]
        note = load_note(report, s) if s.flags else None
        if note:
            out.append((s.name, note))
    return out


def _sequence_note(env: dict) -> list[str]:
    seq = env.get("ort_seq_lengths")
    if not seq:
        return []
    pairs = ", ".join(f"{k} at sequence length {v}" for k, v in seq.items())
    return [f"Text model: ORT latency {pairs} (every token real).", ""]


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 160 else s[:157] + "..."


# The default console table: what fits an 80-column terminal. (column in COLUMNS, its short header)
COMPACT: list[tuple[str, str]] = [
    ("stage", "stage"),
    ("top-1 %", "top-1"),
    ("Δ top-1 pp", "Δ pp"),
    ("params", "params"),
    ("MACs", "MACs"),
    ("ORT bs1 ms", "bs1 ms"),
    ("speedup bs1", "speedup"),
    ("realised/MAC", "real/MAC"),
]
#: the quality metrics' short headers in the compact table
COMPACT_METRICS = {
    "cosine to teacher": "cosine",
    "top-10 overlap %": "top10 %",
    "kNN top-1 %": "kNN %",
    "linear probe top-1 %": "linear %",
}
GAP = 2  # spaces between the compact table's columns (it draws no vertical rules)
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


#: what the console table's figures are: the ms of two rows were timed at different moments, so their ratio is
#: not the speedup (that is the median of back-to-back pairs with the dense model)
CAPTION = (
    "ms: each row's own timing (the ratio of two rows is not the speedup); speedup: vs dense, median of "
    "back-to-back pairs; real/MAC: best speedup / MAC ratio"
)


def fit_labels(
    headers: list[str], rows: list[list[str]], notes: list[str | None], width: int
) -> tuple[list[list[str]], list[str]]:
    """The rows with their first cell (the label) shortened so that the table, its columns ``GAP`` apart, fits
    ``width`` terminal columns while every other cell keeps its whole width (a number is never wrapped or
    cut). A label that had to be shortened, or that has a note (the file a row measures), gets a marker and
    a footnote: '5:cluster¹' and '¹ 5:cluster measures model.cluster.xz (lzma)'."""
    others = sum(max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers) if i) if rows else 0
    budget = max(len(headers[0]), 6, width - others - GAP * (len(headers) - 1))
    out: list[list[str]] = []
    footnotes: list[str] = []
    for row, note in zip(rows, notes, strict=True):
        label = row[0]
        if note is None and len(label) <= budget:
            out.append(row)
            continue
        mark = str(len(footnotes) + 1).translate(_SUPERSCRIPT)
        room = budget - len(mark)
        shown = label if len(label) <= room else label[: max(1, room - 1)] + "…"
        out.append([shown + mark, *row[1:]])
        footnotes.append(f"{mark} {label}" + (f" measures {note}" if note else ""))
    return out, footnotes


#: the compact table's columns that give way, in this order (then the rightmost ones), when the figures would
#: not leave a stage label MIN_LABEL columns (``--wide`` shows them all)
GIVE_WAY = ("realised/MAC", "Δ top-1 pp", "MACs", "params")
MIN_LABEL = 12


def compact_view(report: CompressionReport, width: int) -> tuple[list[str], list[list[str]], list[str]]:
    """The compact table's headers, rows and footnotes for a ``width``-column terminal: the COMPACT columns and
    the quality metrics, less those with no value in any row (top-1 of a label-free encoder) and those that
    must give way (``GIVE_WAY``), the stage labels fitted to what the figures leave (``fit_labels``)."""
    names, table, short = columns(report), rows(report), renamed(report)
    keys = COLUMNS + metric_keys(report)  # what each column is; ``names`` holds their headers, in the same order
    metrics = [(k, COMPACT_METRICS.get(h, h)) for k, h in zip(keys[len(COLUMNS) :], names[len(COLUMNS) :], strict=True)]
    compact = [(c, short.get(h, h)) for c, h in COMPACT]  # an embedding model's top-1 columns read kNN top-1
    cols = [(c, h) for c, h in [*compact, *metrics] if c == "stage" or any(r[keys.index(c)] != "-" for r in table)]

    def figures() -> int:
        return sum(max(len(h), *(len(r[keys.index(c)]) for r in table)) + GAP for c, h in cols[1:])

    for c in GIVE_WAY:
        if table and figures() + MIN_LABEL > width:
            cols = [col for col in cols if col[0] != c]
    while table and len(cols) > 2 and figures() + MIN_LABEL > width:
        cols.pop()  # the last resort: the rightmost columns go before a figure would be cut
    data = [[r[keys.index(c)] for c, _ in cols] for r in table]
    notes = [s.artefact for s in report.stages if s.measured]
    for r, note in zip(data, notes, strict=True):  # the file goes to the footnote, the label keeps the stage
        r[0] = r[0].removesuffix(f" [{note}]") if note else r[0]
    data, footnotes = fit_labels([h for _, h in cols], data, notes, width)
    return [h for _, h in cols], data, footnotes


def print_table(report: CompressionReport, wide: bool = False, console=None) -> None:
    """The report as a console table: the compact columns fitted to the terminal (at most 80 columns, numbers
    never wrapped, long labels shortened with a footnote), or all of them with ``wide``."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    if not wide:
        headers, data, footnotes = compact_view(report, min(console.width, 80))
        width = min(console.width, 80)
        console.print(compact_table(f"distillprune: {report.recipe}", headers, data))
        for line in [*footnotes, CAPTION + "; --wide: all columns"]:  # under the table, as wide as a terminal
            console.print(escape(printable(line)), highlight=False, width=width)
    else:
        _print_wide(report, console)
    for name, f in flag_lines(report):  # names from report.json: never raw escapes
        console.print(f"[yellow]flag[/] {escape(printable(name))}: {escape(printable(f))}")


def compact_table(title: str, headers: list[str], data: list[list[str]], caption: str | None = None) -> Any:
    """A rich table that is exactly as wide as its cells and ``GAP``: no vertical rules, no cell wrapped."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=escape(printable(title)),
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
    )
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i else "left", no_wrap=True)
    for r in data:  # '[model.int8.onnx]' is text, not rich markup; text from report.json: never raw escapes
        table.add_row(*(escape(printable(c)) for c in r))
    return table


def _print_wide(report: CompressionReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    names = columns(report)
    cols = [(c, c) for c in names]
    data = rows(report)
    table = Table(title=escape(printable(f"distillprune: {report.recipe}")), caption=CAPTION)
    for c, header in cols:
        # "fold": on a narrow terminal a cell wraps, it is never cut short with an ellipsis; a stage name is
        # never wrapped ("1:evaluat" / "e"): the other columns give way
        stage = c == "stage"
        table.add_column(header, justify="left" if stage else "right", overflow="fold", no_wrap=stage)
    at = [c for c, _ in cols].index("stage")
    for r in data:
        r = [printable(c) for c in r]  # text from report.json: never raw escapes
        r[at] = r[at].replace(" [", "\n[", 1)  # the deployed file under its stage: the name column stays narrow
        table.add_row(*(escape(c) for c in r))  # '[model.int8.onnx]' is text, not rich markup
    console.print(table)


def write_markdown(report: CompressionReport, run_dir: str | Path) -> Path:
    return write_text(Path(run_dir) / "report.md", render_markdown(report))


LOAD_CHECKS.append(render_markdown)
