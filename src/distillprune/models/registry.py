"""The model registries: the zoo (``MODELS``, name -> builder ``(num_classes, input_shape, **kwargs) -> nn.Module``,
declared in ``distillprune.registries``) and where a recipe's model comes from (``MODEL_SOURCES``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distillprune.core.registry import Registry
from distillprune.registries import MODELS

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]
#: where a recipe's model comes from (``model.source``): name -> ``fn(cfg: ModelConfig, num_classes, input_shape)
#: -> (model, ArchSpec)``; "zoo" builds ``model.name`` from MODELS, "hf" loads a Hugging Face folder (the
#: transformers family registers it: the first lookup imports the library)
MODEL_SOURCES: Registry[Callable[..., Any]] = Registry("model source", loads_library=True)


@dataclass(frozen=True)
class ModelExample:
    """How the contract tests build a model of the zoo: an input shape, kwargs, and the importable module
    an optional extra provides (the test skips, naming the extra, when it is missing)."""

    input_shape: tuple[int, ...] = (3, 16, 16)
    kwargs: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None


def with_example(
    input_shape: tuple[int, ...] = (3, 16, 16), requires: str | None = None, **kwargs: Any
) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        fn.example = ModelExample(tuple(input_shape), kwargs, requires)  # type: ignore[attr-defined]
        return fn

    return deco


def example_of(name: str) -> ModelExample:
    return getattr(MODELS.get(name), "example", ModelExample())
