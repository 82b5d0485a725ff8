"""What every quantizer shares: the registry, the job it gets, the result it returns, and the
helpers around ONNX Runtime (float export + pre-processing, parity, accuracy of an ONNX file).

A quantizer is ``fn(job: QuantJob) -> QuantResult``, registered by name in ``QUANTIZERS``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distillprune.core.registry import Registry
from distillprune.errors import QuantizationError
from distillprune.quant.config import QuantConfig

Batches = Callable[[], Iterable[np.ndarray]]


@dataclass
class QuantJob:
    """Everything a quantizer needs. ``model`` is the float model (QAT trains it in place)."""

    model: nn.Module
    input_shape: tuple[int, ...]
    cfg: QuantConfig
    out: Path  # the quantized ONNX file to write
    workdir: Path  # intermediate files (float ONNX, calibration ranges)
    calibration: Batches  # normalised float32 input batches (a fresh iterator per call)
    test_x: np.ndarray  # normalised inputs for the parity check
    test_y: np.ndarray | None = None  # labels, for accuracy
    teacher: nn.Module | None = None  # QAT: distil from this model
    train: Callable[..., list[dict]] | None = None  # QAT: train(model, objective, on_step) -> history
    qat: Any = None  # QAT: the stage's QATOptions (epochs, optimizer, observer_fraction...)
    train_steps: int = 0  # QAT: optimizer steps ``train`` will take (for the observer schedule)


@dataclass
class QuantResult:
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

    @classmethod
    def measured(cls, method: str, out: Path, float_file: Path, cmp: dict, reference: str = "float model",
                 details: dict[str, Any] | None = None) -> QuantResult:
        """A result from the written file, the float ONNX it came from, and ``compare``'s numbers."""
        return cls(method, str(out), out.stat().st_size, float_file.stat().st_size, cmp["agreement"],
                   cmp["max_abs_diff"], cmp["accuracy"], cmp["float_accuracy"], reference, details or {})

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        acc = (
            ""
            if self.accuracy is None
            else f", top-1 {self.accuracy:.2f}% (float {self.float_accuracy:.2f}%)"
        )
        return (
            f"{self.method}: {Path(self.path).name} {self.bytes / 1024:.1f} KiB "
            f"(float {self.float_bytes / 1024:.1f} KiB), agreement with the {self.reference} "
            f"{100 * self.agreement:.1f}%{acc}"
        )


Quantizer = Callable[[QuantJob], QuantResult]
QUANTIZERS: Registry[Quantizer] = Registry("quantization method")


def quantizable_ops() -> list[str]:
    """ONNX op types ONNX Runtime's QDQ quantizer knows."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def export_float(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """Float ONNX (BatchNorm folded into convolutions by the exporter)."""
    from distillprune.export.onnx import export_onnx

    return export_onnx(model, input_shape, path)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's quantization pre-processing: symbolic shape inference and graph optimisation."""
    from onnxruntime.quantization import quant_pre_process

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


def module_path(node_name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' (TorchScript exporter scopes) -> 'layer1.0.conv1'."""
    parts = [p for p in node_name.split("/") if p][:-1]
    path = ""
    for p in parts:
        path = p if (not path or p.startswith(path + ".")) else f"{path}.{p}"
    return path


def excluded_nodes(onnx_path: Path, patterns: Sequence[str]) -> list[str]:
    """ONNX node names matching ``patterns`` (by node name or by the torch module that made them)."""
    if not patterns:
        return []
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path)).graph.node]
    out, unmatched = [], []
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(module_path(n), pat)]
        (out.extend(hit) if hit else unmatched.append(pat))
    if unmatched:
        mods = sorted({module_path(n) for n in names} - {""})
        raise QuantizationError(
            f"exclude: {', '.join(map(repr, unmatched))} match no layer; "
            f"layers: {', '.join(mods[:12])}{' ...' if len(mods) > 12 else ''}"
        )
    return sorted(set(out))


def run_onnx(path_or_bytes: str | Path | bytes, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of an ONNX file on ``x`` (float32 NCHW/ND), batched, on ONNX Runtime's CPU provider."""
    from distillprune.export.onnx import session

    try:
        sess = session(path_or_bytes)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise QuantizationError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None
    return np.concatenate([sess.run(None, {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


@torch.no_grad()
def run_torch(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model = model.eval().cpu()
    return np.concatenate(
        [model(torch.from_numpy(x[i : i + batch])).float().numpy() for i in range(0, len(x), batch)]
    )


def compare(out: np.ndarray, ref: np.ndarray, y: np.ndarray | None) -> dict[str, float | None]:
    """Agreement (share of equal top-1), max abs logit difference, and accuracies (%) when labels exist."""
    out, ref = out.astype(np.float32), ref.astype(np.float32)
    res: dict[str, float | None] = {
        "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(out - ref).max()),
        "accuracy": None,
        "float_accuracy": None,
    }
    if y is not None:
        res["accuracy"] = float(100.0 * (out.argmax(1) == y).mean())
        res["float_accuracy"] = float(100.0 * (ref.argmax(1) == y).mean())
    return res


def check_agreement(res: QuantResult, cfg: QuantConfig, hint: str) -> None:
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


def normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Model inputs as the trainer sees them: uint8 scaled to [0, 1], then per-channel standardised."""
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1) if xf.dim() == 4 else (1, -1)
    return ((xf - mean.view(shape)) / std.view(shape)).numpy().astype(np.float32)
