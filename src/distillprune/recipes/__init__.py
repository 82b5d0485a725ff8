"""Recipe schema, the stage registry, and the recipes shipped inside the package."""

from pathlib import Path

from distillprune.recipes.registry import STAGES, StageDef, StageOutcome, register_stage
from distillprune.recipes.schema import Recipe, StageConfig, apply_overrides, load_recipe, read_yaml

BUILTIN = Path(__file__).parent / "builtin"

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
