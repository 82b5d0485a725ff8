"""Where a recipe's model (or student, peer, teacher) comes from."""

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


class HeadConfig(StrictModel):
    """A new classifier for a pretrained network (transfer learning): the file's classifier is not loaded."""

    num_classes: int | None = Field(None, gt=0, description="classes of the new classifier (default: the data's)")
    fold_pool: bool = Field(
        True,
        description="fold an adaptive pool that enlarges small feature maps into the "
        "next Linear (VGG at 32x32: 25088x4096 -> 512x4096, same outputs)",
    )


class ModelConfig(StrictModel):
    name: ModelName = Field("digits_cnn", description="zoo name (distillprune models) or torchvision / timm")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments, e.g. widths")
    checkpoint: str | None = Field(None, description="start from this distillprune checkpoint folder")
    python: str | None = Field(
        None,
        description="your own class or factory: 'path/to/file.py:Name' (or 'package.module:Name'), called with kwargs",
    )
    weights: str | None = Field(
        None, description="a state_dict to load: .pt/.pth (torch.load weights_only) or .safetensors"
    )
    head: HeadConfig | None = Field(None, description="replace the classifier (pretrained weights, new classes)")
    source: SourceName = Field(
        "zoo", description="zoo (model.name, or python: your class) | hf (a local Hugging Face folder at path)"
    )
    path: str | None = Field(
        None,
        description="hf: the model folder (config, weights, tokenizer), or "
        "package:NAME/sub for a folder inside an installed package",
    )
    task: Literal["sequence-classification", "embedding"] | None = Field(
        None,
        description="hf: sequence-classification (logits) or embedding (mean pooling + L2 norm); zoo: embedding "
        "(the classifier dropped: the model outputs the features it read, e.g. a self-supervised backbone)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.source == "zoo" and self.path is not None:
            raise ValueError("path is an option of source: hf")
        if self.source == "zoo" and self.task not in (None, "embedding"):
            raise ValueError(f"task {self.task} is an option of source: hf; a zoo model takes task: embedding only")
        if self.task == "embedding" and self.head is not None:
            raise ValueError("head (a new classifier) and task: embedding (no classifier) exclude each other")
        if self.source != "zoo" and not self.path and not self.checkpoint:
            raise ValueError(f"source: {self.source} needs path (a local model folder)")
        if self.source != "zoo" and (self.python is not None or self.weights is not None or self.head is not None):
            raise ValueError(f"python, weights and head are options of source: zoo, not {self.source}")
        if self.checkpoint is not None:
            extra = [k for k in ("python", "weights", "head") if getattr(self, k) is not None]
            if extra:  # (a name next to a checkpoint is only a label: the checkpoint knows its architecture)
                raise ValueError(
                    "checkpoint is a whole model (architecture + weights): give it without " + ", ".join(extra)
                )
        taken = sorted({"num_classes", "input_shape"} & set(self.kwargs))
        if self.python is None and self.source == "zoo" and taken:  # a zoo builder gets them from the data
            raise ValueError(
                f"kwargs.{taken[0]}: set from the data (its classes and input shape), not by kwargs; drop it"
            )
        if self.python is not None:
            if "name" in self.model_fields_set:
                raise ValueError("give either name (a registered model) or python (your own class), not both")
            target, sep, attr = self.python.rpartition(":")
            if not sep or not target or not attr:
                raise ValueError(f"python: expected 'path/to/file.py:ClassOrFactory', got {self.python!r}")
        return self
