"""The model registry: name -> builder ``(num_classes, input_shape, **kwargs) -> nn.Module``."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distillprune.core.registry import Registry

Builder = Callable[..., nn.Module]
MODELS: Registry[Builder] = Registry("model")
