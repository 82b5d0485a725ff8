"""Render a CompressionReport: Markdown table, console table (rich). Nothing here computes results."""
from __future__ import annotations

from distillprune.report.report import CompressionReport, StageResult

COLUMNS = ["stage", "top-1 %", "Δ top-1 pp", "params", "MACs", "file size", "size gain", "ORT bs1 ms",
           "ORT bs32 ms", "speedup bs1", "speedup bs32", "stage speedup bs1", "MAC ratio", "realised/MAC"]


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


METRICS = {"cosine": "cosine to teacher", "top10_overlap": "top-10 overlap %"}


def metric_keys(report: CompressionReport) -> list[str]:
    """Quality metrics some stage reports (embedders: cosine to the teacher, top-10 retrieval overlap)."""
    return list(dict.fromkeys(k for s in report.stages for k in s.metrics))


def columns(report: CompressionReport) -> list[str]:
    return COLUMNS + [METRICS.get(k, k) for k in metric_keys(report)]


def rows(report: CompressionReport) -> list[list[str]]:
    """One row per measured stage; Δ top-1, size gain and stage speedup are relative to the previous row."""
    out = []
    prev: StageResult | None = None
    for s in report.stages:
        if not s.measured:
            continue
        sp1, sp32 = report.speedup(s, "ort_bs1"), report.speedup(s, "ort_bs32")
        mr = report.mac_ratio(s)
        best = max((v for v in (sp1, sp32) if v is not None), default=None)
        delta = None
        if prev is not None and prev.accuracy is not None and s.accuracy is not None:
            delta = s.accuracy - prev.accuracy
        stage_sp = None if prev is None else _ratio(prev.latency_ms.get("ort_bs1"),
                                                    s.latency_ms.get("ort_bs1"))
        out.append([
            s.name + (f" [{s.artefact}]" if s.artefact else ""),
            "-" if s.accuracy is None else f"{s.accuracy:.2f}",
            "-" if delta is None else f"{delta:+.2f}", _fmt_int(s.params), _fmt_int(s.macs),
            _fmt_bytes(s.onnx_bytes), "-" if prev is None else _x(_ratio(prev.onnx_bytes, s.onnx_bytes)),
            _ms(s, "ort_bs1"), _ms(s, "ort_bs32"), _x(sp1), _x(sp32), _x(stage_sp), _x(mr),
            "-" if best is None or not mr else f"{best / mr:.2f}",
        ] + [_metric(s, k) for k in metric_keys(report)])
        prev = s
    return out


def _metric(s: StageResult, key: str) -> str:
    v = s.metrics.get(key)
    return "-" if v is None else (f"{100 * v:.1f}" if key == "top10_overlap" else f"{v:.4f}")


def _ms(s: StageResult, key: str) -> str:
    return f"{s.latency_ms[key]:.3f}" if key in s.latency_ms else "-"


def render_markdown(report: CompressionReport) -> str:
    env = report.environment
    lines = [f"# distillprune report: {report.recipe}", "",
             f"Latency: ONNX Runtime {env.get('onnxruntime', '?')} CPU provider, "
             f"{env.get('ort_threads', '?')} intra-op thread(s), median of timed windows; "
             f"machine: {env.get('processor', '?')} ({env.get('cpu_count', '?')} cores), "
             f"torch {env.get('torch', '?')}.",
             "Speedups and MAC ratios are relative to the dense model (first measured stage); Δ top-1, "
             "size gain and stage speedup to the previous row. A row marked [file] measures that deployed "
             "file (int8 ONNX, packed clustered weights) instead of the float model's ONNX.", "",
             *_sequence_note(env),
             "| " + " | ".join(columns(report)) + " |", "|" + "---|" * len(columns(report))]
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


def print_table(report: CompressionReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distillprune: {report.recipe}")
    for c in columns(report):
        table.add_column(c, justify="left" if c == "stage" else "right")
    from rich.markup import escape

    for r in rows(report):
        table.add_row(*(escape(c) for c in r))  # '[model.int8.onnx]' is text, not rich markup
    console = Console(width=200)
    console.print(table)
    for s in report.stages:
        for f in s.flags:
            console.print(f"[yellow]flag[/] {s.name}: {f}")
