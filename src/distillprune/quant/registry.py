"""The quantization schemes: one config class per scheme, by method name (``QUANTIZERS``: what a recipe's
``method`` and ``distillprune list quantizers`` name), each carrying its quantizer ``fn(job: QuantJob) ->
QuantResult`` (``@quantizer_for(Config)``). ``quantize`` dispatches by the config's type, as ``prune_`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from distillprune.errors import QuantizationError
from distillprune.registries import QUANTIZERS  # (methods declared there: listing them imports no torch)

__all__ = ["QUANTIZERS", "quantizer_for", "quantizer_of"]

F = TypeVar("F", bound=Callable[..., Any])


def quantizer_for(config: type[Any]) -> Callable[[F], F]:
    """Make ``fn`` the quantizer of ``config`` (and of its subclasses); a second one is an error."""

    def register(fn: F) -> F:
        if vars(config).get("quantizer") is not None:
            raise ValueError(f"{config.__name__} already has a quantizer: {config.quantizer.__name__}")
        config.quantizer = staticmethod(fn)
        return fn

    return register


def quantizer_of(cfg: object) -> Callable[[Any], Any]:
    """The quantizer of ``cfg``'s type (or of the nearest base class that has one)."""
    for klass in type(cfg).__mro__:
        fn = vars(klass).get("quantizer")
        if fn is not None:
            return fn.__func__ if isinstance(fn, staticmethod) else fn  # type: ignore[no-any-return]
    raise QuantizationError(f"no quantizer runs a {type(cfg).__name__}: registered are {', '.join(QUANTIZERS)}")
