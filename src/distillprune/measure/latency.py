"""Measured latency: ONNX Runtime on the CPU (the deployment target), torch on a GPU when present.

Median of ``repeats`` timed windows after ``warmup`` runs; threads fixed so numbers compare. Models with
integer (token) inputs are timed at (batch, sequence) pairs: ``batch_sizes`` paired with ``seq_lengths``.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from distillprune.core.batch import NamedInputs, call, example_inputs
from distillprune.core.config import StrictModel
from distillprune.export.onnx import session


class LatencyConfig(StrictModel):
    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 32], min_length=1)
    seq_lengths: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [64, 128],
        min_length=1,
        description="text models: the sequence length timed with each batch size (paired by position; the last "
        "repeats)",
    )
    threads: int = Field(1, gt=0, description="ONNX Runtime intra-op threads (fixed so runs compare)")
    warmup: int = Field(10, ge=0)
    repeats: int = Field(7, gt=0, description="timed windows; the median is reported")
    min_window_s: float = Field(
        0.05, gt=0, le=60, description="each timed window runs at least this long (seconds, at most 60)"
    )
    pairs: int = Field(
        5,
        ge=1,
        description="a compressed model is timed back to back with the dense model this "
        "many times; its speedup is the median of the pairs' ratios",
    )
    max_spread: float = Field(
        0.25,
        gt=0,
        description="flag a speedup whose pairs spread (max - min) / median more than this: too noisy to resolve",
    )
    gpu_batch_size: int = 256


def windows(fn: Callable[[], object], warmup: int, repeats: int, min_window_s: float) -> list[float]:
    """The one timing loop: ``warmup`` calls, then ``repeats`` timed windows of at least ``min_window_s``
    seconds each (the calls per window sized from a short probe); each window's milliseconds per call.
    Callers take the statistic they need: the median (:func:`_time`), or the minimum (a latency table's
    entries on a loaded machine)."""
    for _ in range(warmup):
        fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_window_s / 4 or n < 3:
        fn()
        n += 1
    per = max((time.perf_counter() - t0) / n, 1e-7)
    iters = max(1, int(min_window_s / per))
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t) / iters * 1e3)
    return out


def _time(fn: Callable[[], object], warmup: int, repeats: int, min_window_s: float) -> float:
    """Median milliseconds per call over the timed windows."""
    return statistics.median(windows(fn, warmup, repeats, min_window_s))


def seq_length(cfg: LatencyConfig, i: int) -> int:
    """The sequence length timed with the ``i``-th batch size."""
    return cfg.seq_lengths[min(i, len(cfg.seq_lengths) - 1)]


def is_sequence_model(sess) -> bool:
    """A graph whose inputs are integer tensors (token ids, masks) rather than one float tensor."""
    return any("int" in i.type for i in sess.get_inputs())


def ort_latency(onnx: str | Path | bytes, input_shape: Sequence[int], cfg: LatencyConfig) -> dict[str, float]:
    """{'bs1': ms, 'bs32': ms, ...} on ONNX Runtime's CPU provider; a text model's ``bs{b}`` is timed at
    sequence length ``seq_length(cfg, i)`` (every token real: the attention mask is all ones)."""
    sess = session(onnx, threads=cfg.threads)
    out = {}
    for i, bs in enumerate(cfg.batch_sizes):
        if is_sequence_model(sess):
            feeds = sequence_feeds(sess, bs, seq_length(cfg, i))
        else:
            feeds = {
                sess.get_inputs()[0].name: np.random.default_rng(0)
                .standard_normal((bs, *input_shape))
                .astype(np.float32)
            }
        out[f"bs{bs}"] = _time(partial(sess.run, None, feeds), cfg.warmup, cfg.repeats, cfg.min_window_s)
    return out


@dataclass
class PairedTiming:
    """A model timed back to back with a reference (the dense model): robust to a machine whose load drifts."""

    ms: float  # median latency of the model over the pairs
    ref_ms: float  # median latency of the reference
    speedup: float  # median over the pairs of ref_ms / ms
    spread: tuple[float, float]  # min and max of the pairs' speedups

    @property
    def relative_spread(self) -> float:
        lo, hi = self.spread
        return (hi - lo) / self.speedup if self.speedup else float("inf")


class OrtTimer:
    """ONNX Runtime sessions kept open, so models can be timed back to back (in pairs) without rebuilding them."""

    def __init__(self, cfg: LatencyConfig):
        self.cfg = cfg
        self._sessions: dict[str, object] = {}
        self._inputs: dict[tuple, np.ndarray] = {}

    def _session(self, onnx: str | Path | bytes):
        key = hashlib.sha1(onnx).hexdigest() if isinstance(onnx, bytes) else str(onnx)
        if key not in self._sessions:
            self._sessions[key] = session(onnx, threads=self.cfg.threads)
        return self._sessions[key]

    def ms(
        self, onnx: str | Path | bytes, input_shape: Sequence[int], batch_size: int, repeats: int | None = None
    ) -> float:
        sess = self._session(onnx)
        feeds = self._feeds(sess, input_shape, batch_size)
        return _time(lambda: sess.run(None, feeds), self.cfg.warmup, repeats or self.cfg.repeats, self.cfg.min_window_s)

    def _feeds(self, sess, input_shape: Sequence[int], batch_size: int) -> dict[str, np.ndarray]:
        """One float input of ``input_shape`` (random, fixed), or a text model's token inputs at the sequence
        length paired with ``batch_size`` (``seq_lengths``)."""
        if is_sequence_model(sess):
            sizes = self.cfg.batch_sizes
            seq = seq_length(self.cfg, sizes.index(batch_size) if batch_size in sizes else len(sizes) - 1)
            return sequence_feeds(sess, batch_size, seq)
        key = (batch_size, *input_shape)
        if key not in self._inputs:
            self._inputs[key] = np.random.default_rng(0).standard_normal(key).astype(np.float32)
        return {sess.get_inputs()[0].name: self._inputs[key]}

    def paired(
        self,
        onnx: str | Path | bytes,
        ref: str | Path | bytes,
        input_shape: Sequence[int],
        batch_size: int,
        pairs: int | None = None,
    ) -> PairedTiming:
        """Time ``onnx`` and ``ref`` alternately ``pairs`` times (3 windows each): median speedup and spread."""
        ms, ref_ms = [], []
        for _ in range(pairs or self.cfg.pairs):
            ref_ms.append(self.ms(ref, input_shape, batch_size, repeats=3))
            ms.append(self.ms(onnx, input_shape, batch_size, repeats=3))
        ratios = [r / m for r, m in zip(ref_ms, ms, strict=True)]
        return PairedTiming(
            statistics.median(ms), statistics.median(ref_ms), statistics.median(ratios), (min(ratios), max(ratios))
        )


def sequence_feeds(sess, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Token id 1 everywhere (valid for any vocabulary; a lookup costs the same whatever the id), an all-ones
    mask, zero token types."""
    feeds = {}
    for inp in sess.get_inputs():
        if "type" in inp.name:
            feeds[inp.name] = np.zeros((batch, seq), np.int64)
        else:
            feeds[inp.name] = np.ones((batch, seq), np.int64)
    return feeds


@torch.no_grad()
def torch_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    cfg: LatencyConfig | None = None,
    mode: str = "eager",
) -> float:
    """Torch latency in ms (synchronised). ``mode``: ``eager``, or ``graph`` (one CUDA graph replay:
    removes the per-kernel launch cost that dominates small nets in eager mode)."""
    cfg = cfg or LatencyConfig()
    model = model.eval().to(device=device, dtype=dtype)
    ex = example_inputs(model, input_shape, batch_size, device)
    x = ex if isinstance(ex, NamedInputs) else torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    # cuDNN's fast half-precision convolutions are NHWC
    if device == "cuda" and isinstance(x, torch.Tensor) and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "graph":
        if device != "cuda":
            raise ValueError("CUDA-graph timing needs device='cuda'")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                call(model, x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call(model, x)

        def run() -> None:
            graph.replay()
            sync()
    else:

        def run() -> None:
            call(model, x)
            sync()

    return _time(run, cfg.warmup, cfg.repeats, cfg.min_window_s)
