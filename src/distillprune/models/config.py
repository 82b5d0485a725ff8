"""Where a recipe's model (or student, peer) comes from."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from distillprune.core.config import StrictModel, registered
from distillprune.models.registry import MODELS

if TYPE_CHECKING:
    ModelName = str
else:
    ModelName = registered(MODELS)


class ModelConfig(StrictModel):
    name: ModelName = Field("digits_cnn", description="zoo name (distillprune models) or torchvision / timm")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments, e.g. widths")
    checkpoint: str | None = Field(None, description="start from this distillprune checkpoint folder")
