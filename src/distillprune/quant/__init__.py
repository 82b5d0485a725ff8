"""Quantization: ONNX Runtime int8 (static QDQ / dynamic), QAT with KD, fp16 / bf16 ONNX.

One entry point, ``quantize(model, data, config)``, dispatched by ``config.method`` through
``QUANTIZERS``; adding a scheme is one module with one ``@QUANTIZERS.register(name)``.
"""

from distillprune.quant import half, ort_dynamic, ort_static, qat  # noqa: F401  (registration)
from distillprune.quant.api import default_filename, make_job, quantize
from distillprune.quant.base import QUANTIZERS, QuantJob, QuantResult
from distillprune.quant.config import CalibrationConfig, QATOptions, QuantConfig
from distillprune.quant.ort_static import StaticInt8

__all__ = [
    "QUANTIZERS",
    "CalibrationConfig",
    "QATOptions",
    "QuantConfig",
    "QuantJob",
    "QuantResult",
    "StaticInt8",
    "default_filename",
    "make_job",
    "quantize",
]
