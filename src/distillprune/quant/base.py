"""What every quantizer shares: the registry, the job it gets, the result it returns, and the
helpers around ONNX Runtime (float export + pre-processing, parity, accuracy of an ONNX file).

A quantizer is ``fn(job: QuantJob) -> QuantResult``, the one of its scheme's config class (``quantizer_for``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from distillprune.core.batch import ArrayBatch
from distillprune.core.modules import LayerSelect, matches
from distillprune.core.reporting import Details, details_type
from distillprune.errors import ExportError, QuantizationError
from distillprune.export.onnx import compare, export_onnx, run_torch
from distillprune.export.onnx import run_onnx as _run_onnx
from distillprune.quant.config import QATOptions, QuantConfig
from distillprune.quant.registry import QUANTIZERS

Batches = Callable[[], Iterable[np.ndarray]]
__all__ = [
    "QUANTIZERS",
    "Batches",
    "QuantJob",
    "QuantResult",
    "check_agreement",
    "compare",
    "excluded_nodes",
    "export_float",
    "op_counts",
    "preprocess",
    "run_onnx",
    "run_torch",
]


@dataclass
class QuantJob:
    """Everything a quantizer needs. ``model`` is the float model (QAT trains it in place)."""

    model: nn.Module
    input_shape: tuple[int, ...]
    cfg: QuantConfig
    out: Path  # the quantized ONNX file to write
    workdir: Path  # intermediate files (float ONNX, calibration ranges)
    calibration: Batches  # normalised float32 input batches (a fresh iterator per call)
    test_x: ArrayBatch  # normalised float inputs (text: named inputs) for the parity check
    test_y: np.ndarray | None = None  # labels, for accuracy
    teacher: nn.Module | None = None  # QAT: distil from this model
    train: Callable[[nn.Module, Callable[[nn.Module], None]], list[dict]] | None = None  # QAT: train(model, on_step)
    qat: QATOptions | None = None  # QAT: epochs, optimizer, observer_fraction...
    train_steps: int = 0  # QAT: optimizer steps ``train`` will take (for the observer schedule)


@details_type
@dataclass
class QuantResult(Details):
    kind = "quantize"
    method: str
    path: str
    bytes: int
    float_bytes: int
    agreement: float  # top-1 agreement with the reference model on ``test_x``
    max_abs_diff: float  # of the logits, same inputs
    accuracy: float | None = None  # of the quantized file, % on test_y
    float_accuracy: float | None = None
    reference: str = "float model"  # what the agreement is measured against
    details: dict[str, Any] = field(default_factory=dict)
    cosine: float | None = None  # mean cosine of the outputs with the reference's (how embedders are judged)

    @classmethod
    def measured(
        cls,
        method: str,
        out: Path,
        float_file: Path,
        cmp: dict,
        reference: str = "float model",
        details: dict[str, Any] | None = None,
    ) -> QuantResult:
        """A result from the written file, the float ONNX it came from, and ``compare``'s numbers."""
        return cls(
            method,
            str(out),
            out.stat().st_size,
            float_file.stat().st_size,
            cmp["agreement"],
            cmp["max_abs_diff"],
            cmp["accuracy"],
            cmp["float_accuracy"],
            reference,
            details or {},
            cmp.get("cosine"),
        )

    def render(self) -> str:
        acc = "" if self.accuracy is None else f", top-1 {self.accuracy:.2f}% (float {self.float_accuracy:.2f}%)"
        cos = "" if self.cosine is None else f", mean cosine {self.cosine:.4f}"
        return (
            f"{self.method}: {Path(self.path).name} {self.bytes / 1024:.1f} KiB "
            f"(float {self.float_bytes / 1024:.1f} KiB), agreement with the {self.reference} "
            f"{100 * self.agreement:.1f}%{cos}{acc}"
        )


Quantizer = Callable[[QuantJob], QuantResult]


def export_float(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """Float ONNX (BatchNorm folded into convolutions by the exporter)."""
    return export_onnx(model, input_shape, path)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's quantization pre-processing: symbolic shape inference and graph optimisation."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    # ORT's symbolic shape inference gives up on transformer graphs (token inputs) and then writes a debug
    # model into the working directory: skip it for them
    g = onnx.load(str(src), load_external_data=False).graph
    if any(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in g.input):
        return _preprocess_plain(src, dst)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as e:  # noqa: BLE001 - symbolic shape inference fails on some graphs; retry without it
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001
            raise QuantizationError(
                f"ONNX Runtime pre-processing failed on {src.name}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
    return dst


def _preprocess_plain(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - ORT's own exception types
        raise QuantizationError(
            f"ONNX Runtime pre-processing failed on {src.name}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return dst


def module_path(node_name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' (TorchScript exporter scopes) -> 'layer1.0.conv1'."""
    parts = [p for p in node_name.split("/") if p][:-1]
    path = ""
    for p in parts:
        path = p if (not path or p.startswith(path + ".")) else f"{path}.{p}"
    return path


def excluded_nodes(onnx_path: Path, layers: LayerSelect) -> list[str]:
    """ONNX node names the selection leaves in float: a node is selected when its name or the torch module
    that made it is selected (patterns of ``layers.include`` / ``layers.exclude``)."""
    if layers.include == ["*"] and not layers.exclude:
        return []
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path)).graph.node]
    unmatched = [
        p
        for p in layers.include + layers.exclude
        if p != "*" and not any(fnmatch.fnmatchcase(n, p) or matches(module_path(n), [p]) for n in names)
    ]
    if unmatched:
        mods = sorted({module_path(n) for n in names} - {""})
        raise QuantizationError(
            f"layers: {', '.join(map(repr, unmatched))} match no layer; "
            f"layers: {', '.join(mods[:12])}{' ...' if len(mods) > 12 else ''}"
        )

    def hit(n: str, patterns: list[str]) -> bool:
        mp = module_path(n)
        return any(fnmatch.fnmatchcase(n, p) for p in patterns) or bool(mp and matches(mp, patterns))

    def kept(n: str) -> bool:
        return hit(n, layers.include) and not hit(n, layers.exclude)

    return sorted(n for n in names if not kept(n))


def run_onnx(path_or_bytes: str | Path | bytes, x: ArrayBatch, batch: int = 256) -> np.ndarray:
    """Logits of an ONNX file (QuantizationError when ONNX Runtime cannot load it)."""
    try:
        return _run_onnx(path_or_bytes, x, batch)
    except ExportError as e:
        raise QuantizationError(str(e)) from None


def check_agreement(res: QuantResult, cfg: QuantConfig, hint: str) -> None:
    if cfg.parity == "cosine":  # embedders: the argmax of an embedding means nothing
        if res.cosine is None or res.cosine < cfg.min_cosine:
            raise QuantizationError(
                f"{res.method}: the quantized model's outputs have a mean cosine of {res.cosine} with the "
                f"{res.reference}'s (< min_cosine {cfg.min_cosine}); {hint}"
            )
        return
    if res.agreement < cfg.min_agreement:
        raise QuantizationError(
            f"{res.method}: the quantized model agrees with the {res.reference} "
            f"on {100 * res.agreement:.1f}% of "
            f"top-1 predictions (< min_agreement {100 * cfg.min_agreement:.0f}%); {hint}"
        )


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
