"""Quantization: ONNX Runtime int8 (static QDQ / dynamic), QAT with KD, fp16 / bf16 ONNX.

One entry point, ``quantize(model, cfg, data)``, dispatched by the config's type: one config class per
scheme (``StaticConfig``, ``DynamicConfig``, ``QATConfig``, ``FP16Config``, ``BF16Config``, in
``QUANTIZERS`` by method name), each run by its own quantizer; adding a scheme is one module with its config
class and quantizer, ``@QUANTIZERS.register(name)`` on the class and ``@quantizer_for(Config)`` on the function.
"""

from distillprune.quant import half, ort_dynamic, ort_static, qat  # noqa: F401  (registration)
from distillprune.quant.api import default_filename, make_job, quantize, scheme_config
from distillprune.quant.base import QuantJob, QuantResult
from distillprune.quant.config import CalibrationConfig, QATOptions, QuantConfig
from distillprune.quant.half import BF16Config, FP16Config
from distillprune.quant.ort_dynamic import DynamicConfig
from distillprune.quant.ort_static import StaticConfig, StaticInt8
from distillprune.quant.qat import QATConfig
from distillprune.quant.registry import QUANTIZERS, quantizer_for

__all__ = [
    "BF16Config",
    "DynamicConfig",
    "FP16Config",
    "QATConfig",
    "QUANTIZERS",
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
    "quantizer_for",
]
