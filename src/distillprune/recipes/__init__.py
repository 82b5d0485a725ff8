"""Recipe schema, the stage registry, and the recipes shipped inside the package.

The schema (``Recipe``, ``load_recipe`` ...) loads on first use: it is the union of every stage's config, whose
modules import torch; the stage registry does not (``distillprune list`` and ``--help`` answer at once).
"""

import importlib
from pathlib import Path
from typing import Any

from distillprune.recipes.registry import STAGES, StageDef, StageOutcome, register_stage

BUILTIN = Path(__file__).parent / "builtin"

_SCHEMA = ("Recipe", "StageConfig", "apply_overrides", "load_recipe", "read_yaml")

__all__ = [
    "BUILTIN",
    "STAGES",
    "Recipe",
    "StageConfig",
    "StageDef",
    "StageOutcome",
    "apply_overrides",
    "load_recipe",
    "read_yaml",
    "register_stage",
]


def __getattr__(name: str) -> Any:
    if name in _SCHEMA:
        return getattr(importlib.import_module("distillprune.recipes.schema"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
