"""The quantizer registry: ``fn(job: QuantJob) -> QuantResult`` by method name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distillprune.core.registry import Registry

QUANTIZERS: Registry[Callable[[Any], Any]] = Registry("quantization method")

#: one config class per scheme, by method name: ``quantize(model, StaticConfig(...))`` runs ``static``; a
#: scheme's module registers its class next to its quantizer
QUANT_CONFIGS: Registry[type[Any]] = Registry("quantization config")
