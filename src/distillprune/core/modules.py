"""Module paths and layer selection: the one place that addresses layers of a model by name.

Every family that acts on some layers (width pruning's exclusions, low rank, clustering, quantization)
selects them with a :class:`LayerSelect` (``include`` / ``exclude`` module-name patterns, fnmatch
style: ``"layer1.*.conv1"``) and reads per-layer values with :func:`first_match`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import TypeVar

from pydantic import Field
from torch import nn

from distillprune.core.config import StrictModel
from distillprune.core.registry import nearest
from distillprune.errors import DistillpruneError

V = TypeVar("V")


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` ('' is the model), or one line naming the nearest path."""
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules()]
        raise DistillpruneError(f"no module '{path}' in {type(model).__name__}{nearest(path, names)}") from None


def set_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at ``path`` (which must exist) by ``new``; returns the old one."""
    old = get_module(model, path)
    parent_path, _, leaf = path.rpartition(".")
    setattr(get_module(model, parent_path), leaf, new)
    return old


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a pattern matches ``name`` or one of its parents ('layer3' covers 'layer3.0.conv1')."""
    patterns = list(patterns)
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), p) for i in range(len(parts), 0, -1) for p in patterns)


def first_match(name: str, table: Mapping[str, V]) -> V | None:
    """The value of the first pattern of ``table`` that matches ``name`` (per-layer overrides)."""
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


class LayerSelect(StrictModel):
    """Which layers a method acts on, by module-name patterns (fnmatch): ``include`` minus ``exclude``."""

    include: list[str] = Field(default_factory=lambda: ["*"], description="module-name patterns to act on")
    exclude: list[str] = Field(default_factory=list, description="module-name patterns never touched")

    def __call__(self, name: str) -> bool:
        return matches(name, self.include) and not matches(name, self.exclude)

    def select(self, model: nn.Module, types: tuple[type[nn.Module], ...] = (nn.Module,)) -> dict[str, nn.Module]:
        """``{name: module}`` of the selected modules of ``types`` (the root module is never selected)."""
        return {n: m for n, m in model.named_modules() if n and isinstance(m, types) and self(n)}

    def excluded(self, model: nn.Module) -> list[nn.Module]:
        """Leaf modules (no children) that the selection leaves out."""
        return [m for n, m in model.named_modules() if n and not any(True for _ in m.children()) and not self(n)]

    def check(self, model: nn.Module, what: str, types: tuple[type[nn.Module], ...] = (nn.Module,)) -> None:
        """One line when a pattern names nothing in ``model`` (a typo would otherwise select silently)."""
        names = [n for n, m in model.named_modules() if n and isinstance(m, types)]
        for p in self.include + self.exclude:
            if p != "*" and not any(matches(n, [p]) for n in names):
                raise DistillpruneError(
                    f"{what}: pattern '{p}' matches no layer of {type(model).__name__}{nearest(p, names)}"
                )
