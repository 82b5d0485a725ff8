"""A registry per family (models, data sources, losses, importance criteria, ...).

Registering a name twice is an error, never a silent overwrite; looking up an unknown name
raises with the closest registered names.

Built-in methods live in modules that import torch; listing a registry must not (``distillprune list``
answers at once). A registry therefore holds, besides what is registered, *declared* names: the module
whose import registers each one (``declare``). A declared name is listed and validated like a registered
one and its module is imported on the first ``get``. A registry whose built-ins register from modules all
over the library (history ops, architecture sources...) is built with ``loads_library=True`` instead: its
first read imports the library, through the loader ``distillprune/__init__`` installs (core imports no
family).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from distillprune.errors import DistillpruneError

T = TypeVar("T")


def nearest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Library:
    """Imports the package's families once (installed by ``distillprune/__init__``)."""

    loader: Callable[[], object] | None = None
    state = "not loaded"  # -> "loading" -> "loaded"

    def load(self) -> None:
        if self.state != "not loaded" or self.loader is None:
            return  # loaded, or an import inside the load itself asked (it completes when the load does)
        self.state = "loading"
        try:
            self.loader()
            self.state = "loaded"
        finally:
            if self.state == "loading":
                self.state = "not loaded"


library = _Library()


def set_library_loader(loader: Callable[[], object]) -> None:
    """What a ``loads_library`` registry calls on its first read: import every family of the package."""
    library.loader = loader


@dataclass(frozen=True)
class _Declared:
    module: str  # importing it registers the name


class Registry(Generic[T]):
    def __init__(self, family: str, *, loads_library: bool = False):
        self.family = family
        self._items: dict[str, T | _Declared] = {}
        self._loads_library = loads_library

    def declare(self, module: str, *names: str) -> None:
        """``names`` are registered by importing ``module``: listed and checked at once, imported on first use.
        Declaration order is the order of ``in_order`` (a module registering a declared name keeps its place)."""
        for name in names:
            if name in self._items:
                raise ValueError(f"{self.family} '{name}' is already declared or registered")
            self._items[name] = _Declared(module)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            held = self._items.get(name)
            if name in self._items and not isinstance(held, _Declared):
                raise ValueError(f"{self.family} '{name}' is already registered by {held!r}")
            self._items[name] = obj
            return obj

        return deco

    def _read(self) -> None:
        if self._loads_library:
            library.load()

    def get(self, name: str) -> T:
        self._read()
        try:
            obj = self._items[name]
        except KeyError:
            raise DistillpruneError(
                f"unknown {self.family} {str(name)!r}{nearest(str(name), list(self._items))}; "
                f"expected one of: {', '.join(sorted(self._items))}"
            ) from None
        if isinstance(obj, _Declared):
            importlib.import_module(obj.module)
            obj = self._items[name]
            if isinstance(obj, _Declared):  # a wrong declaration: a bug, the contract tests catch it
                raise ValueError(f"importing {obj.module} did not register {self.family} '{name}'")
        return obj

    def loaded(self, name: str) -> bool:
        """Whether ``name`` is registered now (declared names count once their module is imported); this
        imports nothing."""
        return name in self._items and not isinstance(self._items[name], _Declared)

    def unregister(self, name: str) -> None:
        """Remove a registration (for tests that register a toy method and clean up after themselves)."""
        del self._items[name]

    @property
    def version(self) -> tuple[str, ...]:
        """Changes whenever the registered names change (for caches built from the registry)."""
        self._read()
        return tuple(self._items)

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` with the nearest names (a pydantic validator reports it
        with its location in the recipe)."""
        self._read()
        if name not in self._items:
            raise ValueError(
                f"unknown {self.family} {str(name)!r}{nearest(str(name), list(self._items))}; "
                f"expected one of: {', '.join(sorted(self._items))}"
            )
        return name

    def items(self) -> list[tuple[str, T]]:
        """Every name with its object (declared modules are imported)."""
        return [(n, self.get(n)) for n in self.names()]

    def names(self) -> list[str]:
        self._read()
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """Names in declaration / registration order (the order a family's package imports its methods)."""
        self._read()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._read()
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
