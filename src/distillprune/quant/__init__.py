"""Quantization: ONNX Runtime int8 (static QDQ / dynamic), QAT with KD, fp16 / bf16 ONNX.

One entry point, ``quantize(model, cfg, data)``, dispatched by the config's type: one config class per
scheme (``StaticConfig``, ``DynamicConfig``, ``QATConfig``, ``FP16Config``, ``BF16Config``, in
``QUANT_CONFIGS``), run by the quantizer of its method (``QUANTIZERS``); adding a scheme is one module with
its config class and quantizer, ``@QUANT_CONFIGS.register(name)`` and ``@QUANTIZERS.register(name)``.
"""

from distillprune.quant import half, ort_dynamic, ort_static, qat  # noqa: F401  (registration)
from distillprune.quant.api import default_filename, make_job, quantize, scheme_config
from distillprune.quant.base import QUANTIZERS, QuantJob, QuantResult
from distillprune.quant.config import CalibrationConfig, QATOptions, QuantConfig
from distillprune.quant.half import BF16Config, FP16Config
from distillprune.quant.ort_dynamic import DynamicConfig
from distillprune.quant.ort_static import StaticConfig, StaticInt8
from distillprune.quant.qat import QATConfig
from distillprune.quant.registry import QUANT_CONFIGS

__all__ = [
    "BF16Config",
    "DynamicConfig",
    "FP16Config",
    "QATConfig",
    "QUANTIZERS",
    "QUANT_CONFIGS",
    "StaticConfig",
    "scheme_config",
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
