"""Calibration data: batches of the recipe's training split, fed to ONNX Runtime's calibrators."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from distillprune.core.batch import NamedInputs
from distillprune.data.base import DataBundle, normalize
from distillprune.errors import QuantizationError
from distillprune.quant.base import Batches
from distillprune.quant.config import CalibrationConfig


def bundle_batches(data: DataBundle, cfg: CalibrationConfig) -> Batches:
    """``cfg.samples`` training inputs (a seeded random subset), normalised, in ``cfg.batch_size`` batches."""
    n = min(cfg.samples, len(data.train))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    if isinstance(data.train.x, NamedInputs):  # token ids: batches of named inputs, padded per batch
        named = data.train.x.cpu()

        def named_batches() -> Iterator[NamedInputs]:
            for i in range(0, n, cfg.batch_size):
                yield named[order[i : i + cfg.batch_size]]

        return named_batches  # type: ignore[return-value]
    x = normalize(data.train.x[order].cpu(), data.mean.cpu(), data.std.cpu()).numpy().astype(np.float32)

    def batches() -> Iterator[np.ndarray]:
        for i in range(0, len(x), cfg.batch_size):
            yield x[i : i + cfg.batch_size]

    return batches


def tensor_batches(items: Iterable[torch.Tensor | np.ndarray]) -> Batches:
    """User-given calibration batches (already normalised model inputs)."""
    xs = [
        t.cpu()
        if isinstance(t, NamedInputs)
        else np.asarray(t.detach().cpu().float() if torch.is_tensor(t) else t, dtype=np.float32)
        for t in items
    ]

    def batches() -> Iterator[np.ndarray]:
        return iter(xs)

    return batches


class BatchReader:
    """ONNX Runtime's calibration interface over our batches; refuses an empty calibration set.

    It is a ``CalibrationDataReader`` by that class's own ``__subclasshook__`` (it has ``get_next``), and it
    iterates like one; not deriving from it keeps ``onnxruntime.quantization`` (and ``onnx``) out of the
    imports until a quantizer runs."""

    def __init__(self, batches: Batches, input_name: str = "input", names: list[str] | None = None):
        self.batches, self.input_name, self.names = batches, input_name, names
        self.count = 0
        self._it: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self.batches())
        x = next(self._it, None)
        if x is None:
            if self.count == 0:
                raise QuantizationError(
                    "calibration set is empty: static quantization needs at least one batch "
                    "of inputs (check calibration.samples and the training split)"
                )
            return None
        if len(x) == 0:
            return self.get_next()
        self.count += len(x)
        if isinstance(x, NamedInputs):  # the inputs the graph takes, by name
            feeds = x.numpy()
            return {k: v for k, v in feeds.items() if self.names is None or k in self.names}
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def __iter__(self) -> BatchReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feeds = self.get_next()
        if feeds is None:
            raise StopIteration
        return feeds

    def rewind(self) -> None:
        self._it, self.count = None, 0
