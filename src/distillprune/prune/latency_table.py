"""A latency lookup table for planning: the measured ONNX Runtime time of every Conv/Linear layer shape a
plan can produce, so the planner prices a candidate without exporting and timing it.

Each entry is one layer's kernel time on the target runtime (ORT CPU provider, the run's thread count, the
target batch size), timed in context (``prune.latency_probe``) on first use, memoised, and kept in a
per-machine cache (``prune.latency_cache``) so that the next plan on the machine reads it instead. The
planner turns the entries into a model's latency with a per-model correction fitted to the dense model's own
profile and to every candidate it times end to end (``prune.predict``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from distillprune.measure.latency import LatencyConfig
from distillprune.prune.heads import find_attentions
from distillprune.prune.latency_cache import LatencyCache, shape_key
from distillprune.prune.latency_probe import LAYER, empty_onnx, layer_onnx, node_times, session_ms


@dataclass(frozen=True)
class LayerShape:
    kind: str  # conv | linear
    cin: int
    cout: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    hw: tuple[int, int] = (1, 1)  # input spatial size (conv); (rows per sample, 1) of a linear (tokens, pixels)

    def resized(self, cin: int, cout: int) -> LayerShape:
        """The same layer with other channel counts. A depthwise conv keeps groups == channels: its inputs and
        outputs are one channel group (Torch-Pruning cuts them together, while a plan may list the conv on one
        side only), so it takes the smaller of the two counts for both -- never an ``M not divisible by
        group`` conv that ONNX Runtime refuses."""
        if self.groups == self.cin == self.cout and self.groups > 1:
            cin = cout = groups = min(cin, cout)
        else:
            groups = self.groups
        return LayerShape(self.kind, cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, self.hw)

    def macs(self) -> int:
        if self.kind == "linear":
            return self.cin * self.cout * self.hw[0]
        h = (self.hw[0] + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        w = (self.hw[1] + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1] * h * w


def layer_of(key: str) -> str:
    """The module name of a :func:`layer_shapes` key (``conv@2``: the second call of ``conv``)."""
    return key.split("@", 1)[0]


def _pair(v: tuple[int, ...]) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    """``m``'s padding per side as numbers: ``padding="valid"`` is 0, ``"same"`` is half the kernel's
    dilated extent (exact for odd kernels; torch pads an even kernel one more on one side)."""
    if m.padding == "valid":
        return 0, 0
    if m.padding == "same":
        d, k = _pair(m.dilation), _pair(m.kernel_size)
        return d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2
    assert not isinstance(m.padding, str)  # torch accepts only "valid" and "same"
    return _pair(m.padding)


def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    """Every Conv2d / Linear used in the forward pass, with its input's spatial size. A layer called more than
    once (a shared conv) costs once per call: its later calls are listed as ``name@2``, ``name@3``...

    The two matmuls of each hand-written attention (``prune.heads``) are listed too, as the Linears of the same
    MACs (``<attention>:scores``, ``q @ k^T``: ``width`` inputs, one output per token; ``<attention>:mix``: one
    input per token, ``width`` outputs; one row per token): they shrink with its heads."""
    shapes = _layers(model, input_shape)
    for att in find_attentions(model):
        for key in [k for k in shapes if layer_of(k) == att.root]:
            rows, call = shapes[key].hw[0], key[len(att.root) :]  # ('' or '@2')
            shapes[att.scores + call] = LayerShape("linear", att.width, rows, hw=(rows, 1))
            shapes[att.mix + call] = LayerShape("linear", rows, att.width, hw=(rows, 1))
    return shapes


def _layers(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    shapes: dict[str, LayerShape] = {}
    hooks = []

    def hook(name: str, m: nn.Module):
        def fn(_m: nn.Module, inp: tuple) -> None:
            x = inp[0]
            calls = sum(1 for n in shapes if n == name or n.startswith(name + "@"))
            key = name if not calls else f"{name}@{calls + 1}"
            if isinstance(m, nn.Conv2d):
                shapes[key] = LayerShape(
                    "conv",
                    m.in_channels,
                    m.out_channels,
                    _pair(m.kernel_size),
                    _pair(m.stride),
                    conv_padding(m),
                    _pair(m.dilation),
                    m.groups,
                    (int(x.shape[-2]), int(x.shape[-1])),
                )
            elif isinstance(m, nn.Linear):
                # a Linear over tokens or channels-last pixels runs once per row: (N, ..., in) -> rows per sample
                rows = max(1, x.numel() // max(int(x.shape[0]) * m.in_features, 1)) if x.dim() > 2 else 1
                shapes[key] = LayerShape("linear", m.in_features, m.out_features, hw=(rows, 1))

        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name:
            hooks.append(m.register_forward_pre_hook(hook(name, m)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return shapes


class LatencyTable:
    """Per-layer ORT latency (ms) at one batch size: each entry timed on first use (``prune.latency_probe``: the
    layer's kernel time in context), read from and written to the per-machine cache (``prune.latency_cache``)
    when there is one. ``measured``: entries this table timed; ``cached``: entries it read from the cache."""

    def __init__(self, cfg: LatencyConfig, batch_size: int, cache: LatencyCache | None = None):
        self.cfg, self.batch, self.cache = cfg, batch_size, cache
        self._ms: dict[LayerShape, float] = {}
        self.measured = 0
        self.cached = 0
        over = cache.overhead if cache is not None else None
        if over is None:
            over = session_ms(empty_onnx(batch_size), {"input": _zeros((batch_size, 1))}, cfg.threads)
            if cache is not None:
                cache.set_overhead(over)
        self.overhead = over  # the session's per-run overhead (ms)

    def ms(self, shape: LayerShape) -> float:
        got = self._ms.get(shape)
        if got is not None:
            return got
        key = shape_key(shape)
        got = self.cache.get(key) if self.cache is not None else None
        if got is not None:
            self.cached += 1
        else:
            got = self._time(shape)
            self.measured += 1
            if self.cache is not None:
                self.cache.put(key, got)
        self._ms[shape] = got
        return got

    def _time(self, shape: LayerShape) -> float:
        dims = (self.batch, shape.cin, *shape.hw) if shape.kind == "conv" else (self.batch * shape.hw[0], shape.cin)
        blob, feeds = layer_onnx(shape.kind, shape, self.batch), {"input": _zeros(dims)}
        nodes = node_times(blob, feeds, self.cfg.threads)
        mine = [ms for name, (_, ms) in nodes.items() if name.startswith(LAYER)]
        if mine:
            return max(sum(mine), 1e-4)
        # no profile: the whole session, less its per-run overhead and the two 1x1 convs' share (a rough bound)
        return max(session_ms(blob, feeds, self.cfg.threads) - self.overhead, 1e-4)

    def raw(self, shapes: Iterable[LayerShape]) -> float:
        return sum(self.ms(s) for s in shapes)

    def model_ms(self, blob: bytes, input_shape: tuple[int, ...]) -> float:
        """A whole model's time at the table's batch size in the entries' statistic: the sum of its nodes' fastest
        kernel times plus the session's per-run overhead (the fastest whole call without a profile)."""
        feeds = {"input": _zeros((self.batch, *input_shape))}
        nodes = node_times(blob, feeds, self.cfg.threads, min_runs=30, min_s=0.2)
        if nodes:
            return sum(ms for _, ms in nodes.values()) + self.overhead
        return session_ms(blob, feeds, self.cfg.threads, min_s=0.2)

    def flush(self) -> None:
        """Write new entries to the cache (if any)."""
        if self.cache is not None:
            self.cache.flush()


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
