"""What every data set must satisfy before anything trains on it, checked once when it is loaded:
numeric, finite inputs; non-empty splits; integer labels in ``0 .. num_classes - 1``. Each failure is one
``DataError`` line naming the split and the first offending sample."""

from __future__ import annotations

import numpy as np
import torch

from distillprune.core.batch import NamedInputs
from distillprune.data.base import DataBundle, Split
from distillprune.errors import DataError

#: more classes than this is a label-encoding mistake (ids, hashes), not a classification task
MAX_CLASSES = 100_000


def check_inputs(x: np.ndarray, name: str) -> None:
    """``x`` (one split's inputs, as loaded) is a non-empty numeric array of 2 to 4 dimensions."""
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: inputs of dtype {x.dtype} ({_kind(x.dtype)}); expected numbers (uint8 images or float features)"
        )
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{name}: inputs of shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W) / (N, H, W, C)")
    if x.shape[0] == 0:
        raise DataError(f"{name}: no samples (inputs of shape {x.shape})")
    if 0 in x.shape[1:]:
        raise DataError(f"{name}: each sample is empty (inputs of shape {x.shape})")


def labels_to_int(y: np.ndarray, name: str) -> np.ndarray:
    """``y`` as int64 class indices; refuses what a cast would silently change (fractions, NaN, text)."""
    if y.ndim != 1:
        raise DataError(f"{name}: labels of shape {y.shape}; expected one integer class index per sample (N,)")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{name}: label {float(y[i])!r} at index {i} is not a whole number; labels are class "
                "indices 0 .. num_classes - 1"
            )
        if len(y) and np.abs(y).max() > 2**62:
            raise DataError(f"{name}: labels up to {np.abs(y).max():.3g}; expected class indices")
        return y.astype(np.int64)
    raise DataError(f"{name}: labels of dtype {y.dtype} ({_kind(y.dtype)}); expected integer class indices")


def class_count(max_label: int, where: str) -> int:
    """The number of classes implied by the largest label (refused before a list that long is built)."""
    if not 0 <= max_label < MAX_CLASSES:
        raise DataError(
            f"{where}: labels go up to {max_label}; expected class indices 0 .. num_classes - 1 "
            f"with at most {MAX_CLASSES} classes"
        )
    return max_label + 1


def check_bundle(bundle: DataBundle, where: str = "data") -> None:
    """Finite inputs and labels in range for every split (the one check every source goes through). Text
    (named token inputs, padded per batch) is checked for its labels; a data set without labels (label-free
    text, unlabelled images) has no classes."""
    text = isinstance(bundle.train.x, NamedInputs)
    labelled = bundle.train.y is not None or (not text and bundle.test.y is not None)
    if labelled and not 1 <= bundle.num_classes <= MAX_CLASSES:
        raise DataError(
            f"{where}: {bundle.num_classes} classes; expected 1 .. {MAX_CLASSES} "
            "(labels are class indices 0 .. num_classes - 1)"
        )
    if not text and tuple(bundle.train.x.shape[1:]) != tuple(bundle.test.x.shape[1:]):
        raise DataError(
            f"{where}: train inputs {tuple(bundle.train.x.shape[1:])} and test inputs "
            f"{tuple(bundle.test.x.shape[1:])} differ in shape"
        )
    for split_name in ("train", "test"):
        split: Split = getattr(bundle, split_name)
        if not text and not isinstance(split.x, NamedInputs):
            _check_finite(split.x, f"{where} ({split_name} split)")
        if split.y is not None:
            _check_labels(split.y, bundle.num_classes, f"{where} ({split_name} split)")


def _check_finite(x: torch.Tensor, where: str) -> None:
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        n = int(bad.sum())
        raise DataError(
            f"{where}: the data has NaN or infinite input values ({n} sample(s), the first at index "
            f"{i}); clean or drop them before training"
        )


def _check_labels(y: torch.Tensor, num_classes: int, where: str) -> None:
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{where}: labels of dtype {y.dtype}; expected integer class indices")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = int(lo if lo < 0 else hi)
        i = int(((y < 0) | (y >= num_classes)).nonzero()[0])
        raise DataError(
            f"{where}: label {bad} at index {i} is out of range; labels must be class indices "
            f"0 .. {num_classes - 1} ({num_classes} classes)"
        )


def _kind(dtype: np.dtype) -> str:
    return {
        "U": "text",
        "S": "bytes",
        "O": "Python objects",
        "c": "complex numbers",
        "M": "dates",
        "m": "time deltas",
        "V": "raw records",
    }.get(dtype.kind, dtype.kind)
