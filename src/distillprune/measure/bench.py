"""``distillprune bench``: ONNX files side by side (fp32 / int8 / fp16): size, measured ONNX Runtime
CPU latency at fixed threads (text models: at (batch, sequence) pairs), and top-1 accuracy on a data set
when one is given (label-free text: the mean cosine of each file's outputs with the first file's).

The files take normalised inputs (as exported by distillprune), so the data comes from a recipe
(its ``data`` block, normalised with the statistics the training used) or an ``.npz``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distillprune.core.batch import NamedInputs
from distillprune.data.base import DataBundle
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig, ort_latency


@dataclass
class OnnxBench:
    file: str
    kind: str  # fp32 | int8 (QDQ) | int8 (dynamic) | fp16 | bf16
    bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    samples: int | None = None
    note: str = ""
    cosine: float | None = None  # label-free data: mean cosine of the outputs with the first file's

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_kind(model) -> str:
    from onnx import TensorProto

    ops = {n.op_type for n in model.graph.node}
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}:
        return "int8 (dynamic)"
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
        return "int8 (QDQ)"
    types = [i.data_type for i in model.graph.initializer]
    for t, name in ((TensorProto.FLOAT16, "fp16"), (TensorProto.BFLOAT16, "bf16")):
        if types.count(t) and types.count(t) >= types.count(TensorProto.FLOAT):
            return name
    return "fp32"


def is_text(model) -> bool:
    """Integer inputs (token ids, masks): a sequence model, timed at (batch, sequence) pairs."""
    from onnx import TensorProto

    return any(i.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32) for i in model.graph.input)


def graph_inputs(model) -> list:
    """The graph's real inputs (older exporters list the initializers among the inputs too)."""
    weights = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def check_graph(model, p: Path, scored: bool) -> None:
    """What bench needs of a graph: at least one input, and (to score accuracy) (batch, classes) logits."""
    if not graph_inputs(model):
        raise DistillpruneError(f"{p}: the ONNX graph has no inputs; nothing to feed or time")
    if not model.graph.output:
        raise DistillpruneError(f"{p}: the ONNX graph has no outputs")
    out = model.graph.output[0].type.tensor_type
    rank = len(out.shape.dim) if out.HasField("shape") else None
    if scored and rank is not None and rank != 2:
        raise DistillpruneError(
            f"{p}: its first output has {rank} dimensions; top-1 accuracy needs (batch, classes) logits "
            "(bench it without --data to time it)"
        )


def check_batch_memory(p: Path, shape: Sequence[int], batch_sizes: Sequence[int]) -> None:
    """Refuse, before allocating, a timing batch (random float32 inputs) larger than a quarter of memory."""
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    sample = 4 * math.prod(shape)
    for bs in batch_sizes:
        if bs * sample > have // 4:
            raise DistillpruneError(
                f"{p.name}: a batch of {bs} inputs of shape {tuple(shape)} needs {bs * sample / 2**30:.3g} GiB; "
                f"this machine has {have / 2**30:.1f} GiB (lower --batch-sizes)"
            )


def input_shape(model) -> tuple[int, ...]:
    dims = graph_inputs(model)[0].type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise DistillpruneError(
            f"the model's input has symbolic dimensions besides the batch: {[d.dim_param or d.dim_value for d in dims]}"
        )
    return tuple(int(d.dim_value) for d in dims)


def any_text(paths: Sequence[str | Path]) -> bool:
    import onnx

    return any(Path(p).is_file() and is_text(onnx.load(str(p), load_external_data=False)) for p in paths)


def bench_onnx(
    paths: Sequence[str | Path],
    data: DataBundle | None = None,
    cfg: LatencyConfig | None = None,
    limit: int | None = None,
) -> list[OnnxBench]:
    import onnx

    from distillprune.export.onnx import check_external_data, mean_cosine, onnx_accuracy, run_onnx

    cfg = cfg or LatencyConfig()
    out = []
    x = y = None
    reference = None
    if data is not None:
        n = len(data.test) if limit is None else min(limit, len(data.test))
        x, y = data.inputs("test", n), data.labels("test", n)
        if y is None and not isinstance(x, NamedInputs):
            x = None  # label-free images: nothing to score
    for p in map(Path, paths):
        if not p.is_file():
            raise DistillpruneError(f"ONNX file not found: {p}")
        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf decode errors
            raise DistillpruneError(f"{p}: not an ONNX model ({str(e).splitlines()[0] if str(e) else e!r})") from None
        check_external_data(p, model)
        check_graph(model, p, x is not None and y is not None)
        row = OnnxBench(p.name, onnx_kind(model), p.stat().st_size)
        text = is_text(model)
        shape = (cfg.seq_lengths[0],) if text else input_shape(model)
        check_batch_memory(p, shape, cfg.batch_sizes)
        if text and x is not None and not isinstance(x, NamedInputs):
            raise DistillpruneError(f"{p.name} takes token ids; the data has {tuple(x.shape[1:])}-shaped inputs")
        if not text and x is not None and tuple(x.shape[1:]) != shape:
            raise DistillpruneError(f"{p.name} takes inputs of shape {shape}; the data has {tuple(x.shape[1:])}")
        try:
            row.latency_ms = ort_latency(p, shape, cfg)
        except Exception as e:  # noqa: BLE001 - ORT has no CPU kernel (bf16) or cannot load the graph
            row.note = f"ONNX Runtime CPU cannot run it: {str(e).splitlines()[0][:90]}"
            out.append(row)
            continue
        if x is not None:
            row.accuracy = onnx_accuracy(p, x, y)
            row.samples = len(x)
            if y is None:  # label-free text: agreement of the outputs with the first file's
                outputs = run_onnx(p, x)
                reference = outputs if reference is None else reference
                row.cosine = round(mean_cosine(outputs, reference), 5)
        if row.kind in ("fp16", "bf16"):
            row.note = "half precision targets GPUs; ORT CPU has no fast fp16 kernels"
        out.append(row)
    return out


def render_bench(rows: list[OnnxBench], cfg: LatencyConfig) -> str:
    keys = [f"bs{b}" for b in cfg.batch_sizes]
    ref = next((r for r in rows if r.kind == "fp32" and r.latency_ms), None)
    cos = any(r.cosine is not None for r in rows)
    head = (
        ["file", "kind", "size KiB", "top-1 %"]
        + (["cosine vs first"] if cos else [])
        + [f"ORT {k} ms" for k in keys]
        + ([f"speedup {k} vs {ref.file}" for k in keys] if ref else [])
        + ["note"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.file, r.kind, f"{r.bytes / 1024:.1f}", "-" if r.accuracy is None else f"{r.accuracy:.2f}"]
        if cos:
            cells.append("-" if r.cosine is None else f"{r.cosine:.4f}")
        cells += [f"{r.latency_ms[k]:.3f}" if k in r.latency_ms else "-" for k in keys]
        if ref:
            cells += [
                f"{ref.latency_ms[k] / r.latency_ms[k]:.2f}x" if k in r.latency_ms and k in ref.latency_ms else "-"
                for k in keys
            ]
        cells.append(r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_note(rows: list[OnnxBench]) -> str:
    n = {r.samples for r in rows if r.samples}
    return f"accuracy on {n.pop()} test samples" if len(n) == 1 else ""


__all__ = [
    "OnnxBench",
    "accuracy_note",
    "bench_onnx",
    "any_text",
    "input_shape",
    "is_text",
    "onnx_kind",
    "render_bench",
]
