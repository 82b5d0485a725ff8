"""The quantizer registry: ``fn(job: QuantJob) -> QuantResult`` by method name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distillprune.core.registry import Registry

QUANTIZERS: Registry[Callable[[Any], Any]] = Registry("quantization method")
