"""Data options of a recipe."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from distillprune.core.config import StrictModel, registered
from distillprune.data.registry import SOURCES

if TYPE_CHECKING:
    SourceName = str
else:
    SourceName = registered(SOURCES)


class AugmentConfig(StrictModel):
    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels")
    hflip: bool = Field(False, description="random horizontal flip")


class NormalizeConfig(StrictModel):
    """The input statistics a model was trained with (per channel, after scaling uint8 to [0, 1])."""

    mean: list[float] = Field(..., min_length=1, description="per-channel mean, e.g. [0.4914, 0.4822, 0.4465]")
    std: list[float] = Field(..., min_length=1, description="per-channel std, e.g. [0.2470, 0.2435, 0.2616]")

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeConfig:
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalize: {len(self.mean)} means but {len(self.std)} stds")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"normalize.std must be > 0, got {self.std}")
        return self


class DataConfig(StrictModel):
    source: SourceName = Field("digits", description="digits | npz | cifar10_jpeg | cifar10_bin | imagefolder | "
                                              "torchvision | hf")
    path: str | None = Field(None, description="file or folder for npz / cifar10_* / imagefolder / hf")
    name: str | None = Field(None, description="data set name for torchvision / hf")
    image_size: int | None = Field(None, gt=0, le=8192, description="imagefolder: resize images to this square size")
    batch_size: int = Field(64, gt=0, description="training batch; under torchrun the global batch, shared by the "
                                                  "processes (docs/distributed.md)")
    eval_batch_size: int = Field(256, gt=0)
    augment: AugmentConfig = AugmentConfig()
    limit_train: int | None = Field(None, gt=0, description="use N training samples: a seeded, class-balanced subset")
    limit_test: int | None = Field(None, gt=0, description="use N test samples: a seeded, class-balanced subset")
    labels: bool = Field(True, description="false: withhold training labels (label-free distillation)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits: share held out for testing")
    seed: int = 0
    normalize: NormalizeConfig | None = Field(None, description="the mean/std your model was trained with "
                                                                "(default: computed from the training split)")
