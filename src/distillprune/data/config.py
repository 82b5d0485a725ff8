"""Data options of a recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from distillprune.core.config import StrictModel, registered
from distillprune.registries import SOURCES

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


class TextConfig(StrictModel):
    """Text sources: how texts are read and tokenised (with the model folder's tokenizer by default)."""

    tokenizer: str | None = Field(
        None, description="folder with a Hugging Face tokenizer (default: model.path when model.source is hf)"
    )
    max_length: int = Field(128, gt=1, description="tokens per text (longer texts are truncated)")
    format: Literal["auto", "csv", "jsonl", "txt", "fortune"] = Field(
        "auto", description="auto: by file suffix (.csv, .jsonl, .txt; fortune files have none)"
    )
    column: str = Field("text", description="csv/jsonl: the text column")
    pair_column: str | None = Field(None, description="csv/jsonl: a second text (sentence pairs)")
    label_column: str = Field("label", description="csv/jsonl: labels (absent: label-free data)")
    files: list[str] = Field(
        default_factory=lambda: ["*"], description="a folder without train.*/test.* files: the file-name patterns read"
    )
    sentences: bool = Field(False, description="split every text into sentences (at . ! ? followed by a space)")
    min_chars: int = Field(1, ge=1, description="drop shorter texts")
    max_chars: int | None = Field(None, gt=0, description="drop longer texts")


class DataConfig(StrictModel):
    source: SourceName = Field(
        "digits", description="digits | npz | cifar10_jpeg | cifar10_bin | imagefolder | torchvision | hf | text"
    )
    path: str | None = Field(None, description="file or folder for npz / cifar10_* / imagefolder / hf")
    made_by: str | None = Field(
        None, description="the command that makes the files at data.path (said when they are missing)"
    )
    name: str | None = Field(None, description="data set name for torchvision / hf")
    image_size: int | None = Field(None, gt=0, le=8192, description="imagefolder: resize images to this square size")
    batch_size: int = Field(
        64,
        gt=0,
        description="training batch; under torchrun the global batch, shared by the processes (docs/distributed.md)",
    )
    eval_batch_size: int = Field(256, gt=0)
    augment: AugmentConfig = AugmentConfig()
    limit_train: int | None = Field(None, gt=0, description="use N training samples: a seeded, class-balanced subset")
    limit_test: int | None = Field(None, gt=0, description="use N test samples: a seeded, class-balanced subset")
    labels: bool = Field(True, description="false: withhold training labels (label-free distillation)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits, text: share held out for testing")
    validation_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="carve this share of the training split (seeded, class-balanced) as a validation split that "
        "replaces the test split, so nothing of the run sees the test set (distillprune tune judges trials on it)",
    )
    seed: int = 0
    normalize: NormalizeConfig | None = Field(
        None, description="the mean/std your model was trained with (default: computed from the training split)"
    )
    text: TextConfig = Field(default_factory=TextConfig, description="text sources: reading and tokenisation")


def path_not_found(cfg: DataConfig, path: object) -> str:
    """The error for a ``data.path`` that does not exist, with the command that makes it when the recipe names one."""
    return f"data.path not found: {path}" + (f"; make it with: {cfg.made_by}" if cfg.made_by else "")
