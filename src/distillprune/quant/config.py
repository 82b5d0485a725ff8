"""Quantization options (the ``quantize`` stage and ``distillprune.quantize``).

``method`` names a registered quantizer (``distillprune list quantizers``): ``static`` (int8 QDQ,
calibrated), ``dynamic`` (int8 weights, activations quantized at run time), ``qat``
(quantization-aware training with KD, exported to the same int8 QDQ form), ``fp16`` / ``bf16``
(half-precision ONNX for GPUs).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from distillprune.core.config import StrictModel
from distillprune.core.registry import nearest


class CalibrationConfig(StrictModel):
    """Where activation ranges come from: training samples fed through the float model."""

    method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="minmax: observed range; percentile: clip outliers; entropy: KL-optimal range"
    )
    samples: int = Field(256, gt=0, description="training samples fed through the model")
    batch_size: int = Field(32, gt=0)
    percentile: float = Field(99.999, gt=90, le=100, description="percentile method: kept share of |x|")
    seed: int = 0


class QuantConfig(StrictModel):
    method: str = Field("static", description="static | dynamic | qat | fp16 | bf16")
    calibration: CalibrationConfig = CalibrationConfig()
    per_channel: bool = Field(True, description="one weight scale per output channel")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 runs the fused int8 kernels of ONNX Runtime on x86 CPUs"
    )
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: list[str] | None = Field(None, description="ONNX op types to quantize (default: all supported)")
    exclude: list[str] = Field(
        default_factory=list, description="torch module names or ONNX node names (patterns) kept in float"
    )
    min_agreement: float = Field(0.9, ge=0, le=1, description="required top-1 agreement with the float model")
    parity_samples: int = Field(512, gt=0, description="test samples for the parity check")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        from distillprune.quant import QUANTIZERS

        QUANTIZERS.get(v)
        return v

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from distillprune.quant.base import quantizable_ops

        ok = quantizable_ops()
        for op in v:
            if op not in ok:
                raise ValueError(
                    f"op type {op!r} cannot be quantized by ONNX Runtime{nearest(op, ok)}; "
                    f"supported: {', '.join(ok)}"
                )
        return v
