"""Recipe schema and the recipes shipped inside the package."""
from pathlib import Path

from distillprune.recipes.schema import Recipe, apply_overrides, load_recipe, read_yaml

BUILTIN = Path(__file__).parent / "builtin"

__all__ = ["Recipe", "apply_overrides", "load_recipe", "read_yaml", "BUILTIN"]
