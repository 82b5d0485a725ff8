"""Resident data: a split held as tensors (uint8 images, float features, or named int64 token tensors) and
a loader that batches, normalises and augments on the tensors' device, so small-image training is not
loader-bound (no per-sample Python, no worker processes). Text batches are padded per batch to their
longest sequence (``core.batch.NamedInputs``) and never normalised."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from distillprune.core.batch import Batch, NamedInputs
from distillprune.errors import DataError


@dataclass
class Split:
    x: Batch  # (N, C, H, W) uint8 or float, (N, D) float, or NamedInputs of (N, L) int64 (text)
    y: torch.Tensor | None  # (N,) int64; None for unlabeled data

    def __post_init__(self) -> None:
        if len(self.x) == 0:
            raise DataError("data split is empty")
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int | None, seed: int = 0) -> Split:
        """``n`` samples, class-balanced when labelled (see :func:`subset_indices`), in data-set order."""
        if n is None or n >= len(self):
            return self
        idx = torch.from_numpy(subset_indices(None if self.y is None else self.y.cpu().numpy(), len(self), n, seed))
        idx = idx.to(self.x.device)
        return Split(self.x[idx], None if self.y is None else self.y[idx])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))


def subset_indices(labels: np.ndarray | None, total: int, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n`` out of ``total`` samples.

    With labels the subset is class-balanced (classes take turns in a seeded order), so a data set
    stored sorted by class -- as CIFAR packs often are -- does not collapse to its first classes.
    """
    if n >= total:
        return np.arange(total)
    perm = np.random.default_rng(seed).permutation(total)
    if labels is None:
        return np.sort(perm[:n])
    lab = np.asarray(labels)[perm]
    rank = np.empty(total, dtype=np.int64)  # position of each sample among its class, in perm order
    for c in np.unique(lab):
        where = np.flatnonzero(lab == c)
        rank[where] = np.arange(len(where))
    take = np.lexsort((np.arange(total), rank))[:n]  # round-robin over classes
    return np.sort(perm[take])


@dataclass
class DataBundle:
    train: Split
    test: Split
    num_classes: int
    classes: list[str]
    mean: torch.Tensor  # per channel (or per feature), applied after scaling uint8 to [0, 1]
    std: torch.Tensor
    name: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def inputs(self, split: str = "test", n: int | None = None) -> np.ndarray | NamedInputs:
        """The first ``n`` normalised inputs of a split as float32 numpy (for ONNX Runtime); named inputs
        (text) as they are, on the CPU."""
        x = getattr(self, split).x
        x = x if n is None else x[:n]
        if isinstance(x, NamedInputs):
            return x.cpu()
        return normalize(x.cpu(), self.mean.cpu(), self.std.cpu()).numpy().astype(np.float32)

    def labels(self, split: str = "test", n: int | None = None) -> np.ndarray | None:
        y = getattr(self, split).y
        if y is None:
            return None
        return (y if n is None else y[:n]).cpu().numpy()

    def without_labels(self) -> DataBundle:
        """The same data with training labels withheld (label-free distillation)."""
        return DataBundle(
            Split(self.train.x, None), self.test, self.num_classes, self.classes, self.mean, self.std, self.name
        )


@dataclass
class Examples:
    """Inputs without a data set, for a verb that trains nothing: prune's one calibration batch (one-shot
    pruning), lowrank's input shape, quantize's calibration batches. ``inputs``: one batch (a tensor of
    normalised model inputs, or named inputs) or a list of batches; ``num_classes``: the classifier's output
    size (one-shot pruning never prunes the layers that produce it)."""

    inputs: Batch | list[Batch] | list[np.ndarray]
    num_classes: int | None = None

    def batches(self) -> list:
        """The batches as a list (one batch given: a list of one)."""
        return list(self.inputs) if isinstance(self.inputs, (list, tuple)) else [self.inputs]

    @property
    def input_shape(self) -> tuple[int, ...]:
        xs = self.batches()
        if not xs:
            raise DataError("Examples: no input batch given (expected a tensor of inputs or a list of batches)")
        return tuple(xs[0].shape[1:])


@overload
def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor: ...
@overload
def normalize(x: NamedInputs, mean: torch.Tensor, std: torch.Tensor) -> NamedInputs: ...
def normalize(x: Batch, mean: torch.Tensor, std: torch.Tensor) -> Batch:
    """Model inputs as the trainer sees them: uint8 scaled to [0, 1], then standardised per channel (or
    per feature for (N, D) inputs); named inputs (token ids, masks) unchanged. The one owner of input
    normalisation."""
    if isinstance(x, NamedInputs):
        return x
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1) if xf.dim() == 4 else (1, -1)
    return (xf - mean.to(xf.device).view(shape)) / std.to(xf.device).view(shape)


def channel_stats(x: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, NamedInputs):  # token ids are never standardised
        return torch.zeros(0), torch.ones(0)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    dims = [0] + list(range(2, xf.dim())) if xf.dim() == 4 else [0]
    return xf.mean(dims), xf.std(dims).clamp_min(1e-6)


class TensorLoader:
    """Shuffled mini-batches of a resident split with batched augmentation.

    The order and the augmentation draw from a generator seeded by (seed, epoch), so an epoch
    is the same whether or not the run was interrupted before it.

    Under torchrun (``world_size`` > 1) ``batch_size`` is the *global* batch: every rank draws the same
    permutation and the same augmentation for the whole batch and keeps its own contiguous share of it
    (near-equal parts: rank r of W takes ``tensor_split(batch, W)[r]``), so the ranks together see
    exactly the batches, crops and flips of the single-process run, and ``len()`` (the step count) is
    the same on every rank.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        shuffle: bool = False,
        crop_padding: int = 0,
        hflip: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.hflip = crop_padding, hflip
        self.seed, self.epoch, self.device = seed, 0, torch.device(device)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.rank, self.world_size = rank, world_size
        smallest = min(self.batch_len(i) for i in (0, len(self) - 1)) if len(self) else 0
        if world_size > 1 and smallest < world_size:
            raise DataError(
                f"a batch of {smallest} samples cannot be shared by {world_size} processes: "
                f"data.batch_size ({batch_size}) is the global batch; raise it (or use more data)"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_len(self, i: int) -> int:
        """Samples in (global) batch ``i``, all ranks together."""
        return min(self.batch_size, len(self.split) - i * self.batch_size)

    def share(self, n: int) -> tuple[int, int]:
        """This rank's part ``[lo, hi)`` of a global batch of ``n`` samples."""
        q, r = divmod(n, self.world_size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def _draw_order(self) -> tuple[torch.Tensor, torch.Generator]:
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.split)
        return (torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)), gen

    def _batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        """(this rank's indices, their offset in the global batch) for each batch."""
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            lo, hi = self.share(len(idx))
            yield idx[lo:hi], lo

    def order(self) -> torch.Tensor:
        """The epoch's sample order as this rank sees it: the k-th sample it yields is ``order()[k]``."""
        order = self._draw_order()[0]
        if self.world_size == 1:
            return order
        return torch.cat([idx for idx, _ in self._batches(order)])

    def __iter__(self) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        order, gen = self._draw_order()  # the same generator then draws the augmentation
        order = order.to(self.device)
        for i, (idx, lo) in enumerate(self._batches(order)):
            x = self.prepare(self.split.x[idx], gen, draws=self.batch_len(i), at=lo)
            yield x, None if self.split.y is None else self.split.y[idx]

    def prepare(self, x: Batch, gen: torch.Generator | None = None, draws: int | None = None, at: int = 0) -> Batch:
        """Normalise ``x``; with ``gen``, augment it with draws made for a batch of ``draws`` samples (the
        global batch) of which ``x`` is the part starting at ``at``. Named (text) inputs pass unchanged."""
        if isinstance(x, NamedInputs):
            return x
        x = normalize(x, self.mean, self.std)
        if gen is not None and x.dim() == 4:
            n = len(x) if draws is None else draws
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, gen, n, at)
            if self.hflip:
                flip = (torch.rand(n, generator=gen)[at : at + len(x)] < 0.5).to(x.device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return standard_layout(x)


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major (NCHW) strides.

    A one-channel batch can carry channels-last strides and still report ``is_contiguous()``;
    convolutions then run channels-last, and torch 2.13's oneDNN backward for a 1x1 stride-2
    conv with in_channels % 8 != 0 corrupts the heap in that layout (seen after pruning).
    """
    if x.dim() == 4 and x.stride() != _row_major_strides(x.shape):
        return x.clone(memory_format=torch.contiguous_format)
    return x


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator, draws: int | None = None, at: int = 0) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back to size at a random offset per sample, in one gather; offsets are
    drawn for ``draws`` samples (default ``len(x)``) and ``x`` takes those from ``at`` on."""
    b, c, h, w = x.shape
    n = b if draws is None else draws
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[at : at + b].to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[at : at + b].to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (oy.view(b, 1, 1, 1) + ar_h.view(1, 1, h, 1)).expand(b, c, h, w + 2 * pad)
    cols = (ox.view(b, 1, 1, 1) + ar_w.view(1, 1, 1, w)).expand(b, c, h, w)
    return xp.gather(2, rows).gather(3, cols)
