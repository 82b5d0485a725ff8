"""The quantizer registry (``fn(job: QuantJob) -> QuantResult`` by method name, declared in
``distillprune.registries``) and the config class of each scheme."""

from __future__ import annotations

from typing import Any

from distillprune.core.registry import Registry
from distillprune.registries import QUANTIZERS

__all__ = ["QUANTIZERS", "QUANT_CONFIGS"]

#: one config class per scheme, by method name: ``quantize(model, StaticConfig(...))`` runs ``static``; a
#: scheme's module registers its class next to its quantizer
QUANT_CONFIGS: Registry[type[Any]] = Registry("quantization config")
