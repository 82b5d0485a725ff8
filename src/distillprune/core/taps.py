"""Feature taps: capture intermediate outputs by module name through forward hooks.

The model's ``forward`` is never edited; taps are data (a list of module paths).
"""

from __future__ import annotations

import torch
from torch import nn

from distillprune.core.modules import get_module


class FeatureTaps:
    """``with FeatureTaps(model, ["layer3"]) as taps: model(x); taps.features["layer3"]``."""

    def __init__(self, model: nn.Module, paths: list[str]):
        self.features: dict[str, torch.Tensor] = {}
        self.paths = list(dict.fromkeys(paths))
        self._handles = []
        for p in self.paths:
            self._handles.append(get_module(model, p).register_forward_hook(self._hook(p)))

    def _hook(self, path: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            self.features[path] = out

        return hook

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
