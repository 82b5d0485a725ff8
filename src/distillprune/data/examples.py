"""Tiny example data for every source, written to a folder: what the contract tests load through each
registered source (and a compact statement of each source's file format).

``@example_for("npz")`` registers ``fn(folder) -> dict`` (the DataConfig options that load it); ``requires``
names a module an optional extra provides.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillprune.core.registry import Registry

Writer = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class SourceExample:
    write: Writer
    requires: str | None = None


EXAMPLES: Registry[SourceExample] = Registry("data source example")
CLASSES = 4


def example_for(name: str, requires: str | None = None) -> Callable[[Writer], Writer]:
    def deco(fn: Writer) -> Writer:
        EXAMPLES.register(name)(SourceExample(fn, requires))
        return fn

    return deco


def _images(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images (NHWC uint8) whose colour depends on the label, labels cycling over the classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    x[..., 0] += (60 * y).astype(np.uint8)[:, None, None]
    return x, y.astype(np.int64)


@example_for("digits")
def _digits(folder: Path) -> dict[str, Any]:
    return {}


@example_for("npz")
def _npz(folder: Path) -> dict[str, Any]:
    (xtr, ytr), (xte, yte) = _images(12), _images(8, seed=1)
    np.savez(folder / "tiny.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return {"path": str(folder / "tiny.npz")}


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@example_for("cifar10_jpeg")
def _cifar10_jpeg(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"classes": np.array([f"c{i}" for i in range(CLASSES)])}  # np.savez's keywords
    for split, n in (("train", 12), ("test", 8)):
        x, y = _images(n, seed=len(split))
        blobs = [_jpeg(img) for img in x]
        out[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), np.uint8)
        out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        out[f"{split}_labels"] = y
    np.savez(folder / "pack.npz", **out)
    return {"path": str(folder / "pack.npz")}


@example_for("cifar10_bin")
def _cifar10_bin(folder: Path) -> dict[str, Any]:
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x, y = _images(4, size=32, seed=len(name))
        recs = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(4, -1)], axis=1)
        recs.tofile(folder / name)
    return {"path": str(folder)}


@example_for("imagefolder")
def _imagefolder(folder: Path) -> dict[str, Any]:
    from PIL import Image

    for split, n in (("train", 12), ("test", 8)):
        x, y = _images(n, seed=len(split))
        for i, (img, lab) in enumerate(zip(x, y, strict=True)):
            d = folder / split / f"class{lab}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    return {"path": str(folder)}


@example_for("torchvision", requires="torchvision")
def _torchvision(folder: Path) -> dict[str, Any]:
    """MNIST's raw idx files (torchvision reads them without a download or a checksum)."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 12), ("t10k", 8)):
        x, y = _images(n, size=28)
        images = np.ascontiguousarray(x[..., 0])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], ">i4").tobytes() + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, n], ">i4").tobytes() + y.astype(np.uint8).tobytes()
        )
    return {"path": str(folder), "name": "MNIST"}


@example_for("hf", requires="datasets")
def _hf(folder: Path) -> dict[str, Any]:
    import datasets
    from PIL import Image

    splits = {}
    for split, n in (("train", 12), ("test", 8)):
        x, y = _images(n, seed=len(split))
        splits[split] = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in x], "label": y.tolist()})
    datasets.DatasetDict(splits).save_to_disk(str(folder / "hf"))
    return {"path": str(folder / "hf")}


WORDS = (
    "good great fine nice happy bad awful poor sad terrible the a movie film plot actor was is very "
    "quite not really story ending music scene"
).split()


def tiny_tokenizer(folder: Path) -> Path:
    """A WordPiece tokenizer over :data:`WORDS` saved to ``folder`` (needs ``transformers``)."""
    from transformers import BertTokenizer  # transformers 5: the fast tokenizer (BertTokenizerFast is an alias)

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(str(folder))
    return folder


def sentiment_texts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` short reviews whose label (0 negative, 1 positive) follows their adjective."""
    rng = np.random.default_rng(seed)
    pos, neg = WORDS[:5], WORDS[5:10]
    rest = WORDS[10:]
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(rest, size=int(rng.integers(2, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pos if label else neg)))
        out.append((" ".join(words), label))
    return out


@example_for("text", requires="transformers")
def _text(folder: Path) -> dict[str, Any]:
    import csv

    tok = tiny_tokenizer(folder / "tokenizer")
    for split, n in (("train", 12), ("test", 8)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(sentiment_texts(n, seed=len(split)))
    return {"path": str(folder), "text": {"tokenizer": str(tok), "max_length": 16}}
