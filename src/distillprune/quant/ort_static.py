"""Static int8 post-training quantization with ONNX Runtime, in the QDQ format.

Named phases: ``prepare`` (float ONNX, BatchNorm folded, then ORT's pre-processing: shape
inference + graph optimisation) -> ``calibrate`` (activation ranges from training samples:
MinMax, Percentile or Entropy; saved as ``calibration.json``) -> ``convert`` (QuantizeLinear /
DequantizeLinear pairs around every quantizable op, weights int8 per output channel).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from torch import nn

from distillprune.errors import QuantizationError
from distillprune.quant.base import (
    QUANTIZERS,
    Batches,
    QuantJob,
    QuantResult,
    check_agreement,
    compare,
    excluded_nodes,
    export_float,
    op_counts,
    preprocess,
    run_onnx,
    run_torch,
)
from distillprune.quant.calibration import BatchReader
from distillprune.quant.config import QuantConfig
from distillprune.quant.registry import quantizer_for

WEIGHTED = ("Conv", "Gemm", "MatMul")


def _ort():
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return CalibrationMethod, QuantFormat, QuantType


def qtype(name: str):
    _, _, QuantType = _ort()
    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def calib_method(name: str):
    CalibrationMethod, _, _ = _ort()
    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def require_weighted_ops(path: Path, op_types: list[str] | None) -> None:
    """Refuse, in one line, a model with nothing to quantize (e.g. only unsupported ops)."""
    ops = op_counts(path)
    wanted = set(op_types or WEIGHTED)
    if not wanted & set(ops):
        raise QuantizationError(
            f"nothing to quantize: the model has no {'/'.join(sorted(wanted))} node (ops: {', '.join(ops) or 'none'})"
        )


def _input_names(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


class StaticInt8:
    """``prepare(model) -> calibrate(batches) -> convert(out)``; each phase leaves its file in ``workdir``."""

    def __init__(self, cfg: QuantConfig, workdir: Path):
        self.cfg, self.workdir = cfg, Path(workdir)
        self.prepared: Path | None = None
        self.ranges: Path | None = None
        self.calibrated_samples = 0

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Path:
        fp = export_float(model, input_shape, self.workdir / "float.onnx")
        self.prepared = preprocess(fp, self.workdir / "prepared.onnx")
        require_weighted_ops(self.prepared, self.cfg.op_types)
        return self.prepared

    def calibrate(self, batches: Batches) -> Path:
        from onnxruntime.quantization import create_calibrator, save_tensors_data

        if self.prepared is None:
            raise QuantizationError("calibrate() before prepare()")
        c = self.cfg.calibration
        extra = {"percentile": c.percentile} if c.method == "percentile" else {}
        reader = BatchReader(batches, names=_input_names(self.prepared))
        with tempfile.TemporaryDirectory(prefix="dp-calib-") as tmp:
            calibrator = create_calibrator(
                self.prepared,
                self.cfg.op_types,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=calib_method(c.method),
                extra_options=extra,
            )
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress from its histogram calibrators
                    calibrator.collect_data(reader)
                    ranges = calibrator.compute_data()
            except QuantizationError:
                raise
            except Exception as e:  # noqa: BLE001 - ORT raises its own types for shape/dtype mismatches
                raise QuantizationError(
                    f"calibration batch does not fit the model: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                ) from None
            del calibrator
        self.calibrated_samples = reader.count
        self.ranges = self.workdir / "calibration.json"
        save_tensors_data(ranges, self.ranges)
        return self.ranges

    def convert(self, out: Path) -> Path:
        from onnxruntime.quantization import quantize_static

        if self.prepared is None or self.ranges is None:
            raise QuantizationError("convert() before prepare() and calibrate()")
        _, QuantFormat, _ = _ort()
        cfg = self.cfg
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(self.prepared),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=cfg.op_types,
            per_channel=cfg.per_channel,
            activation_type=qtype(cfg.activation_type),
            weight_type=qtype(cfg.weight_type),
            nodes_to_exclude=excluded_nodes(self.prepared, cfg.layers) or None,
            calibrate_method=calib_method(cfg.calibration.method),
            calibration_cache_path=str(self.ranges),
        )
        return out


def static_int8(
    job: QuantJob,
    model: nn.Module | None = None,
    reference: np.ndarray | None = None,
    reference_name: str = "float model",
) -> QuantResult:
    """Run the three phases on ``job`` (or on ``model``) and check the int8 file against ``reference``."""
    model = model if model is not None else job.model
    q = StaticInt8(job.cfg, job.workdir)
    prepared = q.prepare(model, job.input_shape)
    q.calibrate(job.calibration)
    out = q.convert(job.out)
    ref = reference if reference is not None else run_torch(model, job.test_x)
    cmp = compare(run_onnx(out, job.test_x), ref, job.test_y)
    ops = op_counts(out)
    res = QuantResult.measured(
        job.cfg.method,
        out,
        job.workdir / "float.onnx",
        cmp,
        reference_name,
        details={
            "calibration": job.cfg.calibration.method,
            "calibration_samples": q.calibrated_samples,
            "per_channel": job.cfg.per_channel,
            "activations": job.cfg.activation_type,
            "quantized_nodes": ops.get("DequantizeLinear", 0),
            "prepared": prepared.name,
        },
    )
    return res


@QUANTIZERS.register("static")
class StaticConfig(QuantConfig):
    """int8 QDQ through ONNX Runtime, activation ranges calibrated on training inputs (``calibration``)."""

    method: Literal["static"] = "static"


@quantizer_for(StaticConfig)
def static(job: QuantJob) -> QuantResult:
    res = static_int8(job)
    check_agreement(
        res,
        job.cfg,
        "try calibration.method=percentile, more calibration.samples, layers.exclude "
        "the first/last layer, or method=qat",
    )
    return res
