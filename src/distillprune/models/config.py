"""Where a recipe's model (or student, peer) comes from."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from distillprune.core.config import StrictModel, registered
from distillprune.models.registry import MODEL_SOURCES, MODELS

if TYPE_CHECKING:
    ModelName = str
    SourceName = str
else:
    ModelName = registered(MODELS)
    SourceName = registered(MODEL_SOURCES)


class ModelConfig(StrictModel):
    name: ModelName = Field("digits_cnn", description="zoo name (distillprune models) or torchvision / timm")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments, e.g. widths")
    checkpoint: str | None = Field(None, description="start from this distillprune checkpoint folder")
    source: SourceName = Field("zoo", description="zoo (model.name) | hf (a local Hugging Face folder at path)")
    path: str | None = Field(None, description="hf: the model folder (config, weights, tokenizer), or "
                                               "package:NAME/sub for a folder inside an installed package")
    task: Literal["sequence-classification", "embedding"] | None = Field(
        None, description="hf: sequence-classification (logits) or embedding (mean pooling + L2 norm)")

    @model_validator(mode="after")
    def _source(self) -> ModelConfig:
        if self.source == "zoo" and (self.path is not None or self.task is not None):
            raise ValueError("path and task are options of source: hf")
        if self.source != "zoo" and not self.path and not self.checkpoint:
            raise ValueError(f"source: {self.source} needs path (a local model folder)")
        return self
