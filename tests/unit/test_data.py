"""Data sources on generated files, the resident loader, and their errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillprune.data import DataConfig, TensorLoader, load_data
from distillprune.data.base import DataBundle, Split, channel_stats, random_crop
from distillprune.data.sources import CIFAR10_CLASSES, to_nchw
from distillprune.errors import DataError, DistillpruneError


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


# ---------------------------------------------------------------- digits
def test_digits_bundle(digits_bundle):
    b = digits_bundle
    assert b.input_shape == (1, 8, 8)
    assert b.num_classes == 10 and b.classes == [str(i) for i in range(10)]
    assert (len(b.train), len(b.test)) == (1437, 360)
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert 0.0 <= float(b.train.x.min()) and float(b.train.x.max()) <= 1.0
    assert set(b.train.y.tolist()) == set(range(10))
    # stratified: every class in the test split
    assert torch.bincount(b.test.y, minlength=10).min() >= 30
    assert b.mean.shape == (1,) and b.std.shape == (1,)


def test_digits_split_depends_on_seed_and_fraction():
    a, b = load_data(cfg(seed=0)), load_data(cfg(seed=1))
    assert not torch.equal(a.train.x, b.train.x)
    assert len(load_data(cfg(test_fraction=0.5)).test) == 899


def test_limit_train_and_test(digits_bundle):
    b = load_data(cfg(limit_train=100, limit_test=30))
    assert (len(b.train), len(b.test)) == (100, 30)
    from distillprune.data.base import subset_indices

    idx = torch.from_numpy(subset_indices(digits_bundle.train.y.numpy(), len(digits_bundle.train), 100))
    assert torch.equal(b.train.x, digits_bundle.train.x[idx])
    assert torch.equal(b.train.y, digits_bundle.train.y[idx])
    assert torch.bincount(b.train.y, minlength=10).tolist() == [10] * 10  # class-balanced


def test_labels_false_withholds_training_labels_only():
    b = load_data(cfg(labels=False, limit_train=50))
    assert b.train.y is None
    assert len(b.train) == 50
    assert b.test.y is not None and len(b.test) == 360


def test_unknown_source_suggests_the_nearest():
    from distillprune.core.config import validate

    with pytest.raises(DistillpruneError, match="did you mean 'digits'"):
        validate(DataConfig, {"source": "digitz"})  # DataConfig(...) raises pydantic's ValidationError


# ---------------------------------------------------------------- Split / bundle
def test_split_validation():
    with pytest.raises(DataError, match="empty"):
        Split(torch.zeros(0, 3), None)
    with pytest.raises(DataError, match="labels"):
        Split(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    s = Split(torch.arange(10.0).view(10, 1), torch.arange(10))
    assert s.subset(None) is s and s.subset(20) is s
    sub = s.subset(3)
    assert len(sub) == 3 and len(set(sub.y.tolist())) == 3 and torch.equal(sub.x.view(-1).long(), sub.y)
    assert torch.equal(s.subset(3).y, sub.y)  # seeded: the same subset every time


def test_channel_stats_scale_uint8():
    x = torch.full((4, 3, 2, 2), 51, dtype=torch.uint8)
    x[:, 1] = 255
    mean, std = channel_stats(x)
    torch.testing.assert_close(mean, torch.tensor([0.2, 1.0, 0.2]))
    assert (std > 0).all()  # clamped, never zero


# ---------------------------------------------------------------- TensorLoader
def _bundle(n=50, shape=(3, 6, 6)) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 5
    mean, std = channel_stats(x)
    return DataBundle(Split(x, y), Split(x[:10], y[:10]), 5, list("abcde"), mean, std)


def _collect(loader):
    return [(x.clone(), None if y is None else y.clone()) for x, y in loader]


@pytest.mark.parametrize("aug", [{}, {"crop_padding": 2, "hflip": True}])
def test_loader_is_a_function_of_seed_and_epoch(aug):
    b = _bundle()

    def make(seed):
        return TensorLoader(b.train, 8, b.mean, b.std, shuffle=True, seed=seed, **aug)

    l1, l2 = make(3), make(3)
    l1.set_epoch(4)
    l2.set_epoch(4)
    e4a, e4b = _collect(l1), _collect(l2)
    assert len(e4a) == 7  # ceil(50 / 8)
    for (xa, ya), (xb, yb) in zip(e4a, e4b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    l1.set_epoch(5)
    assert not torch.equal(torch.cat([y for _, y in _collect(l1)]), torch.cat([y for _, y in e4a]))
    # iterating again gives the same epoch (no hidden state advances)
    l2.set_epoch(4)
    assert all(torch.equal(a[0], b_[0]) for a, b_ in zip(_collect(l2), e4a, strict=True))
    # a different seed gives a different order
    l3 = make(4)
    l3.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in _collect(l3)]), torch.cat([y for _, y in e4a]))


def test_loader_covers_every_sample_once_and_normalises():
    b = _bundle()
    loader = TensorLoader(b.train, 16, b.mean, b.std, shuffle=True, seed=1)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape == (50, 3, 6, 6) and xs.dtype == torch.float32
    ref = (b.train.x.float() / 255 - b.mean.view(1, -1, 1, 1)) / b.std.view(1, -1, 1, 1)
    # same set of samples, each once: sort both by a per-sample key
    key = lambda t: t.flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(xs[key(xs).argsort()], ref[key(ref).argsort()])
    torch.testing.assert_close(xs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_loader_without_shuffle_and_drop_last():
    b = _bundle()
    loader = TensorLoader(b.train, 16, b.mean, b.std, drop_last=True)
    assert len(loader) == 3
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, b.train.y[:48])
    with pytest.raises(DataError):
        TensorLoader(b.train, 0, b.mean, b.std)


def test_loader_unlabelled_split_yields_none():
    b = _bundle().without_labels()
    assert all(y is None for _, y in TensorLoader(b.train, 20, b.mean, b.std))


def test_loader_feature_vectors():
    x = torch.randn(12, 5)
    mean, std = channel_stats(x)
    assert mean.shape == (5,)
    out = torch.cat([xb for xb, _ in TensorLoader(Split(x, None), 5, mean, std, crop_padding=2, hflip=True)])
    torch.testing.assert_close(out, (x - mean) / std)  # no image augmentation on vectors


def test_random_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 7)
    assert torch.equal(random_crop(x, 0, g), x)
    pad = 2
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    shifted = 0
    for i in range(len(x)):
        windows = [
            (oy, ox)
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
            if torch.equal(out[i], xp[i, :, oy : oy + 5, ox : ox + 7])
        ]
        assert windows, "every sample is a window of its padded image"
        shifted += (pad, pad) not in windows
    assert shifted > 0  # not all centred
    # deterministic given the generator
    assert torch.equal(out, random_crop(x, pad, torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- npz
def test_to_nchw_layouts():
    assert to_nchw(np.zeros((4, 8, 8), np.uint8)).shape == (4, 1, 8, 8)
    t = to_nchw(np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3) % 251)
    assert t.shape == (4, 3, 8, 8) and t.dtype == torch.uint8
    assert to_nchw(np.zeros((4, 3, 8, 8), np.float64)).dtype == torch.float32
    assert to_nchw(np.zeros((4, 7), np.float32)).shape == (4, 7)
    with pytest.raises(DataError):
        to_nchw(np.zeros((2, 2, 2, 2, 2)))
    # known-HWC images (PIL) are transposed whatever their size
    hwc = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert torch.equal(to_nchw(hwc, hwc=True), torch.from_numpy(hwc).permute(0, 3, 1, 2))


def test_npz_nhwc_uint8(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    xte = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    p = tmp_path / "set.npz"
    np.savez(
        p,
        x_train=xtr,
        y_train=np.arange(20) % 4,
        x_test=xte,
        y_test=np.arange(6) % 4,
        classes=np.array(["w", "x", "y", "z"]),
    )
    b = load_data(cfg(source="npz", path=str(p)))
    assert b.input_shape == (3, 8, 8) and b.train.x.dtype == torch.uint8
    assert torch.equal(b.train.x, torch.from_numpy(xtr).permute(0, 3, 1, 2))
    assert b.classes == ["w", "x", "y", "z"] and b.num_classes == 4
    assert b.name == "set"
    assert b.train.y.tolist() == (np.arange(20) % 4).tolist()


def test_npz_nchw_float_and_nhw(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "f.npz"
    xtr = rng.standard_normal((10, 2, 5, 5)).astype(np.float64)
    np.savez(p, x_train=xtr, y_train=np.arange(10) % 3, x_test=xtr[:4], y_test=np.array([0, 1, 2, 2]))
    b = load_data(cfg(source="npz", path=str(p)))
    assert b.input_shape == (2, 5, 5) and b.train.x.dtype == torch.float32
    assert b.num_classes == 3 and b.classes == ["0", "1", "2"]
    torch.testing.assert_close(b.train.x, torch.from_numpy(xtr).float())
    assert b.mean.shape == (2,)

    p2 = tmp_path / "g.npz"
    np.savez(
        p2,
        x_train=rng.integers(0, 256, (8, 6, 6), dtype=np.uint8),
        y_train=np.arange(8) % 2,
        x_test=rng.integers(0, 256, (3, 6, 6), dtype=np.uint8),
        y_test=np.array([0, 1, 1]),
    )
    b2 = load_data(cfg(source="npz", path=str(p2), limit_train=5))
    assert b2.input_shape == (1, 6, 6) and len(b2.train) == 5


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(cfg(source="npz", path=str(tmp_path / "nope.npz")))
    with pytest.raises(DataError, match="needs data.path"):
        load_data(cfg(source="npz"))
    p = tmp_path / "partial.npz"
    np.savez(p, x_train=np.zeros((2, 4), np.float32), y_train=np.zeros(2))
    with pytest.raises(DataError, match=r"missing arrays \['x_test', 'y_test'\]"):
        load_data(cfg(source="npz", path=str(p)))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not an npz archive" * 10)
    with pytest.raises(DataError, match="not a readable"):
        load_data(cfg(source="npz", path=str(junk)))
    p3 = tmp_path / "shape.npz"
    np.savez(
        p3,
        x_train=np.zeros((4, 3, 8, 8), np.float32),
        y_train=np.zeros(4),
        x_test=np.zeros((2, 3, 6, 6), np.float32),
        y_test=np.zeros(2),
    )
    with pytest.raises(DataError, match="differ"):
        load_data(cfg(source="npz", path=str(p3)))


# ---------------------------------------------------------------- CIFAR-10 binary
def _write_cifar_bin(folder: Path, per_file: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        recs = np.zeros((per_file, 3073), np.uint8)
        recs[:, 0] = rng.integers(0, 10, per_file)
        recs[:, 1:] = rng.integers(0, 256, (per_file, 3072))
        recs.tofile(folder / name)
        out[name] = recs
    return out


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_bin(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path / "flat"
    recs = _write_cifar_bin(folder)
    b = load_data(cfg(source="cifar10_bin", path=str(tmp_path if nested else folder)))
    assert (len(b.train), len(b.test)) == (15, 3)
    assert b.input_shape == (3, 32, 32) and b.train.x.dtype == torch.uint8
    assert b.classes == CIFAR10_CLASSES and b.num_classes == 10
    first = recs["data_batch_1.bin"][0]
    assert int(b.train.y[0]) == first[0]
    # 1024 red, then 1024 green, then 1024 blue bytes, row-major
    assert torch.equal(b.train.x[0], torch.from_numpy(first[1:].reshape(3, 32, 32)))
    assert int(b.train.x[0, 1, 0, 5]) == first[1 + 1024 + 5]
    last = recs["data_batch_5.bin"][-1]
    assert int(b.train.y[-1]) == last[0]
    assert b.test.y.tolist() == recs["test_batch.bin"][:, 0].tolist()


def test_cifar10_bin_errors(tmp_path):
    _write_cifar_bin(tmp_path / "a")
    (tmp_path / "a" / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load_data(cfg(source="cifar10_bin", path=str(tmp_path / "a")))
    recs = _write_cifar_bin(tmp_path / "b")
    with open(tmp_path / "b" / "test_batch.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError, match="3073"):
        load_data(cfg(source="cifar10_bin", path=str(tmp_path / "b")))
    recs = _write_cifar_bin(tmp_path / "c")
    bad = recs["data_batch_2.bin"].copy()
    bad[0, 0] = 42  # label out of range for 10 classes
    bad.tofile(tmp_path / "c" / "data_batch_2.bin")
    with pytest.raises(DataError, match="out of range"):
        load_data(cfg(source="cifar10_bin", path=str(tmp_path / "c")))


# ---------------------------------------------------------------- CIFAR-10 JPEG pack
def _jpeg(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_pack(path: Path, n_train: int = 7, n_test: int = 3) -> dict:
    colors = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 30)]
    out = {"classes": np.array(CIFAR10_CLASSES)}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 4
        blobs = [_jpeg(colors[lab]) for lab in labels]
        out[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), np.uint8)
        out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        out[f"{split}_labels"] = labels.astype(np.int64)
    np.savez(path, **out)
    return {"colors": colors}


def test_cifar10_jpeg_pack(tmp_path):
    p = tmp_path / "pack.npz"
    info = _write_pack(p)
    b = load_data(cfg(source="cifar10_jpeg", path=str(p)))
    assert (len(b.train), len(b.test)) == (7, 3)
    assert b.input_shape == (3, 16, 16) and b.train.x.dtype == torch.uint8
    assert b.classes == CIFAR10_CLASSES and b.num_classes == 10
    assert b.train.y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3][:7]
    for i, lab in enumerate(b.train.y.tolist()):
        mean_rgb = b.train.x[i].float().mean(dim=(1, 2))
        torch.testing.assert_close(mean_rgb, torch.tensor(info["colors"][lab], dtype=torch.float32), atol=6, rtol=0)


def test_cifar10_jpeg_limits_decode_only_what_is_used(tmp_path):
    p = tmp_path / "pack.npz"
    _write_pack(p)
    b = load_data(cfg(source="cifar10_jpeg", path=str(p), limit_train=4, limit_test=2))
    assert (len(b.train), len(b.test)) == (4, 2)
    assert sorted(b.train.y.tolist()) == [0, 1, 2, 3]  # one per class of the four
    assert len(set(b.test.y.tolist())) == 2


def test_cifar10_jpeg_errors(tmp_path):
    p = tmp_path / "nope.npz"
    np.savez(p, train_bytes=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="not a CIFAR-10 JPEG pack"):
        load_data(cfg(source="cifar10_jpeg", path=str(p)))
    with pytest.raises(DataError, match="not found"):
        load_data(cfg(source="cifar10_jpeg", path=str(tmp_path / "missing.npz")))


# ---------------------------------------------------------------- imagefolder
def _write_tree(root: Path, size=(6, 6)) -> None:
    colors = {"cat": (200, 20, 20), "dog": (20, 200, 20), "emu": (20, 20, 200)}
    for split, n in (("train", 3), ("test", 2)):
        for c, col in colors.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", size, col).save(d / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_tree(tmp_path / "tree")
    b = load_data(cfg(source="imagefolder", path=str(tmp_path / "tree")))
    assert b.classes == ["cat", "dog", "emu"] and b.num_classes == 3
    assert (len(b.train), len(b.test)) == (9, 6)
    assert b.input_shape == (3, 6, 6) and b.train.x.dtype == torch.uint8
    assert b.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.train.x[0, :, 0, 0].tolist() == [200, 20, 20]  # PNG is lossless
    assert b.test.x[-1, :, 3, 3].tolist() == [20, 20, 200]
    assert b.name == "tree"


def test_imagefolder_resize_and_mixed_sizes(tmp_path):
    _write_tree(tmp_path / "t")
    Image.new("RGB", (9, 5), (1, 2, 3)).save(tmp_path / "t" / "train" / "dog" / "odd.png")
    with pytest.raises(DataError, match="image_size"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "t")))
    b = load_data(cfg(source="imagefolder", path=str(tmp_path / "t"), image_size=4))
    # 4x4 RGB is (N, 4, 4, 3): ambiguous by shape alone, but PIL images are always HWC
    assert b.input_shape == (3, 4, 4) and len(b.train) == 10
    assert b.train.x[0, :, 1, 1].tolist() == [200, 20, 20]


def test_imagefolder_errors(tmp_path):
    _write_tree(tmp_path / "bad")
    (tmp_path / "bad" / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(DataError, match="not an image"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "bad")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "empty")))
    _write_tree(tmp_path / "notest")
    for f in (tmp_path / "notest" / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="no images"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "notest")))
    with pytest.raises(DataError, match="not found"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "missing")))


def test_truncated_image_is_a_data_error(tmp_path):
    _write_tree(tmp_path / "tr", size=(32, 32))
    good = tmp_path / "tr" / "train" / "emu" / "0.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    good.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="0.png"):
        load_data(cfg(source="imagefolder", path=str(tmp_path / "tr")))


def test_loader_batches_are_row_major_even_with_one_channel():
    """Channels-last strides on a 1-channel batch sent CPU convs down a oneDNN path that corrupts the heap."""
    from distillprune.data.base import Split, TensorLoader

    x = torch.empty_strided((16, 1, 8, 8), (64, 1, 8, 1)).normal_()
    loader = TensorLoader(
        Split(x, torch.zeros(16, dtype=torch.long)),
        8,
        torch.zeros(1),
        torch.ones(1),
        shuffle=True,
        crop_padding=1,
        hflip=True,
    )
    for xb, _ in loader:
        assert xb.stride() == (64, 64, 8, 1)


def test_limit_takes_a_class_balanced_subset_of_a_class_sorted_set():
    """CIFAR packs are sorted by class: "the first N" would be one class and a meaningless 100% top-1."""
    from distillprune.data.base import subset_indices

    labels = np.repeat(np.arange(10), 50)  # sorted by class
    idx = subset_indices(labels, len(labels), 100, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert not np.array_equal(idx, subset_indices(labels, len(labels), 100, seed=1))
    assert np.array_equal(subset_indices(None, 500, 500), np.arange(500))
    split = Split(torch.arange(500).float().view(-1, 1), torch.from_numpy(labels))
    sub = split.subset(30)
    assert torch.bincount(sub.y, minlength=10).tolist() == [3] * 10
    assert torch.equal(sub.x.view(-1).long(), torch.from_numpy(subset_indices(labels, 500, 30)))
