"""Old call shapes of the library's verbs, kept working for a while: a verb wrapped by ``legacy_shape`` turns
a call in its old shape into the new one and warns (``DeprecationWarning``) with the new spelling."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: ``translate(args, kwargs) -> (args, kwargs, what changed) | None`` (None: the call is in the new shape)
Translate = Callable[[tuple[Any, ...], dict[str, Any]], "tuple[tuple[Any, ...], dict[str, Any], str] | None"]


def legacy_shape(translate: Translate) -> Callable[[F], F]:
    """Decorate a verb so that ``translate`` may rewrite a call in the old shape; ``inspect.signature`` of the
    verb stays the new one."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            new = translate(args, kwargs)
            if new is not None:
                args, kwargs, what = new
                warnings.warn(f"{fn.__qualname__}: {what}", DeprecationWarning, stacklevel=2)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def pop_known(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The entries of ``kwargs`` named in ``names``, removed from it."""
    return {n: kwargs.pop(n) for n in names if n in kwargs}
