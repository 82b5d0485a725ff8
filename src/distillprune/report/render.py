"""Render a CompressionReport: Markdown table, console table (rich). Nothing here computes results."""

from __future__ import annotations

from pathlib import Path

from distillprune.core.io import write_text
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
    flags = [(s.name, f) for s in report.stages for f in s.flags]
    if flags:
        lines += ["", "## Flags", ""] + [f"- **{n}**: {f}" for n, f in flags]
    details = [(s.name, s.details_dict()) for s in report.stages if s.details]
    if details:
        lines += ["", "## Stage details", ""]
        for n, d in details:
            shown = {k: v for k, v in d.items() if v not in (None, [], {})}
            lines.append(f"- **{n}**: " + "; ".join(f"{k}: {_short(v)}" for k, v in shown.items()))
    return "\n".join(lines) + "\n"


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
COMPACT = [
    ("stage", "stage"),
    ("top-1 %", "top-1"),
    ("Δ top-1 pp", "Δ pp"),
    ("params", "params"),
    ("MACs", "MACs"),
    ("ORT bs1 ms", "bs1 ms"),
    ("speedup bs1", "speedup"),
    ("realised/MAC", "real/MAC"),
]


#: what the console table's figures are: the ms of two rows were timed at different moments, so their ratio is
#: not the speedup (that is the median of back-to-back pairs with the dense model)
CAPTION = (
    "ms: each row's own timing (the ratio of two rows is not the speedup); speedup: vs dense, median of "
    "back-to-back pairs; real/MAC: best speedup / MAC ratio"
)


def print_table(report: CompressionReport, wide: bool = False, console=None) -> None:
    """The report as a console table: the compact columns, or all of them with ``wide``.

    Rich fits the table to the terminal's width (wrapping cells when it must); nothing is forced."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    names, short = columns(report), renamed(report)
    keys = COLUMNS + metric_keys(report)  # what each column is; ``names`` holds their headers, in the same order
    extra = [(k, names[len(COLUMNS) + i]) for i, k in enumerate(metric_keys(report))]  # in both views
    cols = list(zip(keys, names, strict=True)) if wide else [*((c, short.get(h, h)) for c, h in COMPACT), *extra]
    pick = [keys.index(c) for c, _ in cols]
    data = [[r[i] for i in pick] for r in rows(report)]
    table = Table(
        title=f"distillprune: {report.recipe}",
        caption=CAPTION + ("" if wide else "; --wide: all columns"),
    )
    for c, header in cols:
        # "fold": on a narrow terminal a cell wraps, it is never cut short with an ellipsis; a stage name is
        # never wrapped ("1:evaluat" / "e"): the other columns give way
        stage = c == "stage"
        table.add_column(header, justify="left" if stage else "right", overflow="fold", no_wrap=stage)
    at = [c for c, _ in cols].index("stage")
    for r in data:
        r[at] = r[at].replace(" [", "\n[", 1)  # the deployed file under its stage: the name column stays narrow
        table.add_row(*(escape(c) for c in r))  # '[model.int8.onnx]' is text, not rich markup
    console = console or Console()
    console.print(table)
    for s in report.stages:
        for f in s.flags:
            console.print(f"[yellow]flag[/] {escape(s.name)}: {escape(f)}")


def write_markdown(report: CompressionReport, run_dir: str | Path) -> Path:
    return write_text(Path(run_dir) / "report.md", render_markdown(report))


LOAD_CHECKS.append(render_markdown)
