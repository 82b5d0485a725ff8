"""Data sources, one function each, registered by name. All return a resident DataBundle.

Nothing here downloads: files must already be on disk (our machines reach no data set hub).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillprune.core.extras import import_extra
from distillprune.data.base import DataBundle, Split, channel_stats, subset_indices
from distillprune.data.checks import check_bundle, check_inputs, class_count, labels_to_int
from distillprune.data.config import DataConfig, path_not_found
from distillprune.errors import DataError
from distillprune.registries import SOURCES


def load_data(cfg: DataConfig) -> DataBundle:
    try:
        bundle = SOURCES.get(cfg.source)(cfg)
    except (ValueError, TypeError, IndexError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # a source that trips over its files: the data's fault as far as the user can tell; say which
        raise DataError(
            f"data source '{cfg.source}'"
            + (f" at {cfg.path}" if cfg.path else "")
            + f" cannot be read: {type(e).__name__}: {_first_line(e)}"
        ) from None
    if cfg.validation_split is not None:  # before limit_train: the validation split does not move with it
        bundle.train, bundle.test = carve_validation(bundle.train, cfg.validation_split, cfg.seed)
    bundle.train = bundle.train.subset(cfg.limit_train, cfg.seed)
    bundle.test = bundle.test.subset(cfg.limit_test, cfg.seed)
    if cfg.normalize is not None:
        bundle.mean, bundle.std = given_stats(cfg, len(bundle.mean))
    check_bundle(bundle, f"data '{cfg.path or cfg.source}'")
    return bundle.without_labels() if not cfg.labels else bundle


def carve_validation(train: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """``(train without the validation samples, validation)``: a seeded, class-balanced ``fraction`` of the
    training split. The test split is dropped by the caller: what is judged on this never saw it."""
    n_val = int(np.ceil(fraction * len(train)))
    if n_val >= len(train):
        raise DataError(
            f"data.validation_split {fraction} of {len(train)} training samples leaves none to train on; lower it"
        )
    labels = None if train.y is None else train.y.cpu().numpy()
    val = torch.from_numpy(subset_indices(labels, len(train), n_val, seed + 1))  # not limit_train's draw
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val] = False
    return _take(train, torch.nonzero(keep).flatten()), _take(train, val)


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx.to(split.x.device)], None if split.y is None else split.y[idx.to(split.y.device)])


def given_stats(cfg: DataConfig, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.normalize`` as tensors, checked against the data's channel (or feature) count."""
    assert cfg.normalize is not None
    n = len(cfg.normalize.mean)
    if n != channels:
        raise DataError(f"data.normalize gives {n} means/stds but the inputs have {channels} channels")
    return torch.tensor(cfg.normalize.mean), torch.tensor(cfg.normalize.std)


def _need_path(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DataError(f"data source '{cfg.source}' needs data.path")
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise DataError(path_not_found(cfg, p))
    return p


def _bundle(xtr, ytr, xte, yte, classes: list[str], name: str) -> DataBundle:
    train, test = Split(xtr, ytr), Split(xte, yte)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"train inputs {tuple(train.x.shape[1:])} and test inputs {tuple(test.x.shape[1:])} differ")
    mean, std = channel_stats(train.x)
    return DataBundle(train, test, len(classes), classes, mean, std, name)


def to_nchw(x: np.ndarray, hwc: bool = False) -> torch.Tensor:
    """(N,H,W) -> (N,1,H,W); NHWC with 1/3/4 channels -> NCHW; (N,D) and NCHW unchanged.

    ``hwc=True``: the images are known to be NHWC (decoded by PIL), whatever their size."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and (hwc or (x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4))):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise DataError(f"inputs must be (N,D), (N,H,W) or (N,C,H,W)/(N,H,W,C), got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t if t.dtype == torch.uint8 else t.float()


@SOURCES.register("digits")
def digits(cfg: DataConfig) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package): the embedded default."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    n_test = int(np.ceil(cfg.test_fraction * len(x)))
    if not 10 <= n_test <= len(x) - 10:
        raise DataError(
            f"data.test_fraction {cfg.test_fraction} holds out {n_test} of {len(x)} digits; each split "
            "needs at least one image of each of the 10 classes (use 0.006 .. 0.994)"
        )
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=d.target
    )
    return _bundle(
        torch.from_numpy(xtr),
        torch.from_numpy(ytr).long(),
        torch.from_numpy(xte),
        torch.from_numpy(yte).long(),
        [str(i) for i in range(10)],
        "digits",
    )


@SOURCES.register("npz")
def npz(cfg: DataConfig) -> DataBundle:
    """An .npz with x_train, y_train, x_test, y_test (optional 'classes'); images NHWC or NCHW. Without
    y_train and y_test, a data set without labels (self-supervised training, label-free distillation)."""
    p = _need_path(cfg)
    with open_npz(p) as d:
        unlabelled = not {"y_train", "y_test"} & set(d.files)
        need = {"x_train", "x_test"} | (set() if unlabelled else {"y_train", "y_test"})
        missing = need - set(d.files)
        if missing:
            raise DataError(f"{p}: missing arrays {sorted(missing)}; found {sorted(d.files)}")
        arrs = {k: npz_array(d, k, p) for k in sorted(need)}
        classes = [str(c) for c in npz_array(d, "classes", p).reshape(-1)] if "classes" in d.files else None
    for split in ("train", "test"):
        x = arrs[f"x_{split}"]
        check_inputs(x, f"{p}: x_{split}")
        y = arrs.get(f"y_{split}")
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            raise DataError(
                f"{p}: y_{split} has shape {y.shape}; expected one label per sample of x_{split} ({len(x)},)"
            )
    if unlabelled:
        return _bundle(to_nchw(arrs["x_train"]), None, to_nchw(arrs["x_test"]), None, classes or [], p.stem)
    ytr, yte = (torch.from_numpy(labels_to_int(arrs[k], f"{p}: {k}")) for k in ("y_train", "y_test"))
    n = class_count(int(max(ytr.max(), yte.max())), str(p))
    if classes is not None and len(classes) < n:
        raise DataError(f"{p}: labels go up to {n - 1} but 'classes' names {len(classes)} classes")
    return _bundle(
        to_nchw(arrs["x_train"]), ytr, to_nchw(arrs["x_test"]), yte, classes or [str(i) for i in range(n)], p.stem
    )


#: what numpy raises on a damaged .npz (a truncated or corrupt zip member, a bad .npy header)
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RuntimeError)


def open_npz(p: Path):  # type: ignore[no-untyped-def]
    """``np.load`` of an .npz, refusing anything else first (np.load would try a non-zip file as a pickle)."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({e.strerror or e})") from None
    if head.startswith(b"\x93NUMPY"):
        raise DataError(
            f"{p}: a single .npy array; expected an .npz archive (numpy.savez) of x_train, y_train, x_test, y_test"
        )
    if not head.startswith(b"PK"):
        raise DataError(
            f"{p}: not a readable .npz file: it starts with {head!r}, but an .npz is a zip archive "
            "of .npy arrays (numpy.savez)"
        )
    try:
        return np.load(p, allow_pickle=False)
    except NPZ_ERRORS as e:
        raise DataError(f"{p}: not a readable .npz file (truncated or corrupt: {_first_line(e)})") from None


def npz_array(d, key: str, p: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One array of an open .npz; a damaged member or an object array is a one-line DataError."""
    try:
        return np.asarray(d[key])
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(
                f"{p}: array '{key}' holds Python objects; expected numeric arrays (object arrays are never unpickled)"
            ) from None
        raise DataError(f"{p}: array '{key}' is unreadable (truncated or corrupt: {_first_line(e)})") from None
    except NPZ_ERRORS as e:
        raise DataError(f"{p}: array '{key}' is unreadable (truncated or corrupt: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def open_image(f: Any, name: str) -> Any:
    """A PIL image decoded to RGB. An image declaring more pixels than PIL's ``MAX_IMAGE_PIXELS`` (a
    decompression bomb: a small file that decodes to gigabytes) is refused before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns up to twice its cap
        try:
            return Image.open(f).convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(
                f"{name}: the image declares more pixels than the cap of {Image.MAX_IMAGE_PIXELS:,} "
                f"(PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?): {_first_line(e)}"
            ) from None
        except (UnidentifiedImageError, OSError):
            raise DataError(f"not an image: {name}") from None


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    idx = np.arange(len(offsets) - 1) if idx is None else idx
    return np.stack(
        [
            np.asarray(open_image(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes()), f"image {i} of the pack"))
            for i in idx
        ]
    )


@SOURCES.register("cifar10_jpeg")
def cifar10_jpeg(cfg: DataConfig) -> DataBundle:
    """The JPEG pack of CIFAR-10 (``{split}_bytes``, ``{split}_offsets``, ``{split}_labels``, ``classes``)."""
    p = _need_path(cfg)
    d = open_npz(p)
    try:
        out = {}
        for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)):
            off, labels = d[f"{split}_offsets"], d[f"{split}_labels"].astype(np.int64)
            total = len(off) - 1
            # decode only the (class-balanced) subset the limit asks for
            idx = np.arange(total) if limit is None else subset_indices(labels, total, limit, cfg.seed)
            out[split] = (
                to_nchw(_decode_jpegs(d[f"{split}_bytes"], off, idx), hwc=True),
                torch.from_numpy(labels[idx]),
            )
        classes = [str(c) for c in d["classes"]]
    except NPZ_ERRORS as e:
        raise DataError(f"{p}: not a CIFAR-10 JPEG pack ({_first_line(e)})") from None
    return _bundle(*out["train"], *out["test"], classes, "cifar10")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@SOURCES.register("cifar10_bin")
def cifar10_bin(cfg: DataConfig) -> DataBundle:
    """CIFAR-10's binary release (a folder with data_batch_{1..5}.bin and test_batch.bin; no pickle)."""
    p = _need_path(cfg)
    folder = p / "cifar-10-batches-bin" if (p / "cifar-10-batches-bin").is_dir() else p

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        recs = []
        for n in names:
            f = folder / n
            if not f.exists():
                raise DataError(f"CIFAR-10 binary file not found: {f}")
            raw = np.fromfile(f, dtype=np.uint8)
            if raw.size % 3073:
                raise DataError(f"{f}: size {raw.size} is not a multiple of 3073-byte records")
            recs.append(raw.reshape(-1, 3073))
        r = np.concatenate(recs)
        return torch.from_numpy(r[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(r[:, 0].astype(np.int64))

    return _bundle(
        *read([f"data_batch_{i}.bin" for i in range(1, 6)]), *read(["test_batch.bin"]), CIFAR10_CLASSES, "cifar10"
    )


@SOURCES.register("imagefolder")
def imagefolder(cfg: DataConfig) -> DataBundle:
    """``path/{train,test}/<class>/<image>`` read with PIL, resized to ``image_size`` and held as uint8."""
    from PIL import Image

    root = _need_path(cfg)
    splits = {}
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir()) if (root / "train").is_dir() else []
    if not classes:
        raise DataError(f"{root}: expected {root}/train/<class>/<image> folders")
    for split in ("train", "test"):
        xs, ys = [], []
        for ci, c in enumerate(classes):
            folder = root / split / c
            for f in sorted(folder.iterdir()) if folder.is_dir() else []:
                img = open_image(f, str(f))
                if cfg.image_size:
                    img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BILINEAR)
                xs.append(np.asarray(img))
                ys.append(ci)
        if not xs:
            raise DataError(f"{root}/{split}: no images")
        if len({a.shape for a in xs}) > 1:
            raise DataError(f"{root}/{split}: images differ in size; set data.image_size")
        splits[split] = (to_nchw(np.stack(xs), hwc=True), torch.tensor(ys, dtype=torch.int64))
    return _bundle(*splits["train"], *splits["test"], classes, root.name)


@SOURCES.register("torchvision")
def torchvision_source(cfg: DataConfig) -> DataBundle:
    """A torchvision data set class by name (e.g. CIFAR10) from data.path; download is never attempted."""
    tvd = import_extra("torchvision.datasets", "vision", "data source 'torchvision'")
    root = _need_path(cfg)
    cls = getattr(tvd, cfg.name or "", None)
    if cls is None:
        raise DataError(f"torchvision.datasets has no data set '{cfg.name}'")
    out = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=False)
        xs = np.stack([np.asarray(ds[i][0].convert("RGB")) for i in range(len(ds))])
        out += [to_nchw(xs, hwc=True), torch.tensor([int(ds[i][1]) for i in range(len(ds))])]
    xtr, ytr, xte, yte = out
    return _bundle(
        xtr,
        ytr,
        xte,
        yte,
        list(getattr(ds, "classes", [])) or [str(i) for i in range(int(ytr.max()) + 1)],
        cfg.name or "torchvision",
    )


@SOURCES.register("hf")
def hf(cfg: DataConfig) -> DataBundle:
    """A Hugging Face ``datasets`` data set saved with ``save_to_disk`` at data.path (columns image/img, label;
    or a text column, data.text.column, tokenised as the ``text`` source does)."""
    datasets = import_extra("datasets", "hf", "data source 'hf'")
    dd = datasets.load_from_disk(str(_need_path(cfg)))
    if "train" in dd and cfg.text.column in dd["train"].column_names:  # a text data set: tokenise it
        from distillprune.data.text import hf_text

        return hf_text(cfg, dd)
    out = []
    for split in ("train", "test"):
        if split not in dd:
            raise DataError(f"{cfg.path}: no '{split}' split (found {list(dd)})")
        ds = dd[split]
        col = next((c for c in ("image", "img", "pixel_values") if c in ds.column_names), None)
        if col is None or "label" not in ds.column_names:
            raise DataError(f"{cfg.path}: need an image/img column and a label column, got {ds.column_names}")
        xs = np.stack([np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in ds[col]])
        out += [to_nchw(xs), torch.tensor(ds["label"], dtype=torch.int64)]
    names = dd["train"].features["label"].names if hasattr(dd["train"].features["label"], "names") else None
    xtr, ytr, xte, yte = out
    return _bundle(xtr, ytr, xte, yte, names or [str(i) for i in range(int(ytr.max()) + 1)], cfg.name or "hf")
