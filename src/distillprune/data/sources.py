"""Data sources, one function each, registered by name. All return a resident DataBundle.

Nothing here downloads: files must already be on disk (our machines reach no data set hub).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from distillprune.data.base import DataBundle, Split, channel_stats, subset_indices
from distillprune.data.config import DataConfig
from distillprune.data.registry import SOURCES
from distillprune.errors import DataError


def load_data(cfg: DataConfig) -> DataBundle:
    bundle = SOURCES.get(cfg.source)(cfg)
    bundle.train = bundle.train.subset(cfg.limit_train, cfg.seed)
    bundle.test = bundle.test.subset(cfg.limit_test, cfg.seed)
    if bundle.train.y is not None and int(bundle.train.y.max()) >= bundle.num_classes:
        raise DataError(f"label {int(bundle.train.y.max())} out of range for {bundle.num_classes} classes")
    return bundle.without_labels() if not cfg.labels else bundle


def _need_path(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DataError(f"data source '{cfg.source}' needs data.path")
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise DataError(f"data.path not found: {p}")
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
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=cfg.test_fraction, random_state=cfg.seed,
                                          stratify=d.target)
    return _bundle(torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte),
                   torch.from_numpy(yte).long(), [str(i) for i in range(10)], "digits")


@SOURCES.register("npz")
def npz(cfg: DataConfig) -> DataBundle:
    """An .npz with x_train, y_train, x_test, y_test (optional 'classes'); images NHWC or NCHW."""
    p = _need_path(cfg)
    try:
        with np.load(p, allow_pickle=False) as d:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(d.files)
            if missing:
                raise DataError(f"{p}: missing arrays {sorted(missing)}; found {sorted(d.files)}")
            arrs = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            classes = [str(c) for c in d["classes"]] if "classes" in d.files else None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from None
    ytr, yte = (torch.from_numpy(arrs[k].astype(np.int64)) for k in ("y_train", "y_test"))
    n = int(max(ytr.max(), yte.max())) + 1
    return _bundle(to_nchw(arrs["x_train"]), ytr, to_nchw(arrs["x_test"]), yte,
                   classes or [str(i) for i in range(n)], p.stem)


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    from PIL import Image

    idx = np.arange(len(offsets) - 1) if idx is None else idx
    return np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                     for i in idx])


@SOURCES.register("cifar10_jpeg")
def cifar10_jpeg(cfg: DataConfig) -> DataBundle:
    """The JPEG pack of CIFAR-10 (``{split}_bytes``, ``{split}_offsets``, ``{split}_labels``, ``classes``)."""
    p = _need_path(cfg)
    try:
        d = np.load(p, allow_pickle=False)
        out = {}
        for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)):
            off, labels = d[f"{split}_offsets"], d[f"{split}_labels"].astype(np.int64)
            total = len(off) - 1
            # decode only the (class-balanced) subset the limit asks for
            idx = np.arange(total) if limit is None else subset_indices(labels, total, limit, cfg.seed)
            out[split] = (to_nchw(_decode_jpegs(d[f"{split}_bytes"], off, idx), hwc=True),
                          torch.from_numpy(labels[idx]))
        classes = [str(c) for c in d["classes"]]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{p}: not a CIFAR-10 JPEG pack ({e})") from None
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

    return _bundle(*read([f"data_batch_{i}.bin" for i in range(1, 6)]), *read(["test_batch.bin"]),
                   CIFAR10_CLASSES, "cifar10")


@SOURCES.register("imagefolder")
def imagefolder(cfg: DataConfig) -> DataBundle:
    """``path/{train,test}/<class>/<image>`` read with PIL, resized to ``image_size`` and held as uint8."""
    from PIL import Image, UnidentifiedImageError

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
                try:
                    img = Image.open(f).convert("RGB")
                except (UnidentifiedImageError, OSError):
                    raise DataError(f"not an image: {f}") from None
                if cfg.image_size:
                    img = img.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
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
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError("data source 'torchvision' needs: pip install 'distillprune[vision]'") from None
    root = _need_path(cfg)
    cls = getattr(tvd, cfg.name or "", None)
    if cls is None:
        raise DataError(f"torchvision.datasets has no data set '{cfg.name}'")
    out = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=False)
        xs = np.stack([np.asarray(ds[i][0].convert("RGB")) for i in range(len(ds))])
        out += [to_nchw(xs, hwc=True), torch.tensor([int(ds[i][1]) for i in range(len(ds))])]
    return _bundle(*out, list(getattr(ds, "classes", [])) or [str(i) for i in range(int(out[1].max()) + 1)],
                   cfg.name or "torchvision")


@SOURCES.register("hf")
def hf(cfg: DataConfig) -> DataBundle:
    """A Hugging Face ``datasets`` data set saved with ``save_to_disk`` at data.path (columns image/img, label;
    or a text column, data.text.column, tokenised as the ``text`` source does)."""
    try:
        import datasets
    except ImportError:
        raise DataError("data source 'hf' needs: pip install 'distillprune[hf]'") from None
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
    return _bundle(*out, names or [str(i) for i in range(int(out[1].max()) + 1)], cfg.name or "hf")
