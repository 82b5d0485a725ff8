"""The data source registry: name -> ``fn(DataConfig) -> DataBundle``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distillprune.core.registry import Registry

SOURCES: Registry[Callable[[Any], Any]] = Registry("data source")
