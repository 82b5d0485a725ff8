"""A registry per family (models, data sources, losses, importance criteria, ...).

Registering a name twice is an error, never a silent overwrite; looking up an unknown name
raises with the closest registered names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from distillprune.errors import DistillpruneError

T = TypeVar("T")


def nearest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    def __init__(self, family: str):
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.family} '{name}' is already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise DistillpruneError(
                f"unknown {self.family} {str(name)!r}{nearest(str(name), list(self._items))}; "
                f"expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def unregister(self, name: str) -> T:
        """Remove a registration (for tests that register a toy method and clean up after themselves)."""
        return self._items.pop(name)

    @property
    def version(self) -> tuple[str, ...]:
        """Changes whenever the registered names change (for caches built from the registry)."""
        return tuple(self._items)

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` with the nearest names (a pydantic validator reports it
        with its location in the recipe)."""
        if name not in self._items:
            raise ValueError(
                f"unknown {self.family} {str(name)!r}{nearest(str(name), list(self._items))}; "
                f"expected one of: {', '.join(sorted(self._items))}"
            )
        return name

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """Names in registration order (the order a family's package imports its methods)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
