"""Quantization options (the ``quantize`` stage and ``distillprune.quantize``).

``method`` names a registered quantizer (``distillprune list quantizers``): ``static`` (int8 QDQ,
calibrated), ``dynamic`` (int8 weights, activations quantized at run time), ``qat``
(quantization-aware training with KD, exported to the same int8 QDQ form), ``fp16`` / ``bf16``
(half-precision ONNX for GPUs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from distillprune.core.config import StrictModel, registered
from distillprune.core.modules import LayerSelect
from distillprune.core.registry import nearest
from distillprune.distill.config import DistillConfig
from distillprune.quant.registry import QUANTIZERS
from distillprune.train.config import TrainingOptions

if TYPE_CHECKING:
    QuantizerName = str
else:
    QuantizerName = registered(QUANTIZERS)


def quantizable_ops() -> list[str]:
    """ONNX op types ONNX Runtime's QDQ quantizer knows."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


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
    method: QuantizerName = Field("static", description="static | dynamic | qat | fp16 | bf16")
    calibration: CalibrationConfig = CalibrationConfig()
    per_channel: bool = Field(True, description="one weight scale per output channel")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 runs the fused int8 kernels of ONNX Runtime on x86 CPUs"
    )
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: list[str] | None = Field(None, description="ONNX op types to quantize (default: all supported)")
    layers: LayerSelect = Field(
        default_factory=LayerSelect,
        description="layers to quantize, by torch module name or ONNX node name patterns; the rest stay float",
    )
    min_agreement: float = Field(0.9, ge=0, le=1, description="required top-1 agreement with the float model")
    parity: Literal["auto", "top1", "cosine"] = Field(
        "auto",
        description="how the file is judged against the float model: top-1 agreement, or mean cosine of "
        "the outputs (auto: cosine for embedders, where top-1 means nothing)",
    )
    min_cosine: float = Field(
        0.99, ge=-1, le=1, description="parity cosine: required mean cosine to the float model's outputs"
    )
    parity_samples: int = Field(512, gt=0, description="test samples for the parity check")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        ok = quantizable_ops()
        for op in v:
            if op not in ok:
                raise ValueError(
                    f"op type {op!r} cannot be quantized by ONNX Runtime{nearest(op, ok)}; supported: {', '.join(ok)}"
                )
        return v


class QATOptions(TrainingOptions):
    """Quantization-aware training (``method: qat``): KD from the teacher, fake-quant weights/activations."""

    epochs: int = Field(1, ge=1)
    distill: DistillConfig | None = Field(default_factory=DistillConfig)
    observer_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the steps during which activation ranges still follow the data; frozen after",
    )
