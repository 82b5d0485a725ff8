"""Data options of a recipe."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from distillprune.core.config import StrictModel, registered
from distillprune.data.registry import SOURCES

if TYPE_CHECKING:
    SourceName = str
else:
    SourceName = registered(SOURCES)


class AugmentConfig(StrictModel):
    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels")
    hflip: bool = Field(False, description="random horizontal flip")


class TextConfig(StrictModel):
    """Text sources: how texts are read and tokenised (with the model folder's tokenizer by default)."""

    tokenizer: str | None = Field(None, description="folder with a Hugging Face tokenizer (default: model.path "
                                                    "when model.source is hf)")
    max_length: int = Field(128, gt=1, description="tokens per text (longer texts are truncated)")
    format: Literal["auto", "csv", "jsonl", "txt", "fortune"] = Field(
        "auto", description="auto: by file suffix (.csv, .jsonl, .txt; fortune files have none)")
    column: str = Field("text", description="csv/jsonl: the text column")
    pair_column: str | None = Field(None, description="csv/jsonl: a second text (sentence pairs)")
    label_column: str = Field("label", description="csv/jsonl: labels (absent: label-free data)")
    files: list[str] = Field(default_factory=lambda: ["*"], description="a folder without train.*/test.* files: "
                                                                        "the file-name patterns read")
    sentences: bool = Field(False, description="split every text into sentences (at . ! ? followed by a space)")
    min_chars: int = Field(1, ge=1, description="drop shorter texts")
    max_chars: int | None = Field(None, gt=0, description="drop longer texts")


class DataConfig(StrictModel):
    source: SourceName = Field("digits", description="digits | npz | cifar10_jpeg | cifar10_bin | imagefolder | "
                                              "torchvision | hf | text")
    path: str | None = Field(None, description="file or folder for npz / cifar10_* / imagefolder / hf")
    name: str | None = Field(None, description="data set name for torchvision / hf")
    image_size: int | None = Field(None, gt=0, description="imagefolder: resize images to this square size")
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    augment: AugmentConfig = AugmentConfig()
    limit_train: int | None = Field(None, gt=0, description="use N training samples: a seeded, class-balanced subset")
    limit_test: int | None = Field(None, gt=0, description="use N test samples: a seeded, class-balanced subset")
    labels: bool = Field(True, description="false: withhold training labels (label-free distillation)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits, text: share held out for testing")
    seed: int = 0
    text: TextConfig = Field(default_factory=TextConfig, description="text sources: reading and tokenisation")
