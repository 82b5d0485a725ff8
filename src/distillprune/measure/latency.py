"""Measured latency: ONNX Runtime on the CPU (the deployment target), torch on a GPU when present.

Median of ``repeats`` timed windows after ``warmup`` runs; threads fixed so numbers compare.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from distillprune.core.config import StrictModel
from distillprune.export.onnx import session


class LatencyConfig(StrictModel):
    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 32], min_length=1)
    threads: int = Field(1, gt=0, description="ONNX Runtime intra-op threads (fixed so runs compare)")
    warmup: int = Field(10, ge=0)
    repeats: int = Field(7, gt=0, description="timed windows; the median is reported")
    min_window_s: float = Field(0.05, gt=0, description="each timed window runs at least this long")
    gpu_batch_size: int = 256


def _time(fn, warmup: int, repeats: int, min_window_s: float) -> float:
    for _ in range(warmup):
        fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_window_s / 4 or n < 3:
        fn()
        n += 1
    per = max((time.perf_counter() - t0) / n, 1e-7)
    iters = max(1, int(min_window_s / per))
    windows = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        windows.append((time.perf_counter() - t) / iters)
    return statistics.median(windows) * 1e3


def ort_latency(onnx: str | Path | bytes, input_shape: Sequence[int], cfg: LatencyConfig) -> dict[str, float]:
    """{'bs1': ms, 'bs32': ms, ...} on ONNX Runtime's CPU provider."""
    sess = session(onnx, threads=cfg.threads)
    out = {}
    for bs in cfg.batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, *input_shape)).astype(np.float32)
        out[f"bs{bs}"] = _time(lambda x=x: sess.run(None, {"input": x}), cfg.warmup, cfg.repeats, cfg.min_window_s)
    return out


@torch.no_grad()
def torch_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: str = "cuda",
                  dtype: torch.dtype = torch.bfloat16, cfg: LatencyConfig | None = None,
                  mode: str = "eager") -> float:
    """Torch latency in ms (synchronised). ``mode``: ``eager``, or ``graph`` (one CUDA graph replay:
    removes the per-kernel launch cost that dominates small nets in eager mode)."""
    cfg = cfg or LatencyConfig()
    model = model.eval().to(device=device, dtype=dtype)
    x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    if device == "cuda" and x.dim() == 4:  # cuDNN's fast half-precision convolutions are NHWC
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "graph":
        if device != "cuda":
            raise ValueError("CUDA-graph timing needs device='cuda'")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)

        def run() -> None:
            graph.replay()
            sync()
    else:
        def run() -> None:
            model(x)
            sync()

    return _time(run, cfg.warmup, cfg.repeats, cfg.min_window_s)
