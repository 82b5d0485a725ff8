"""A latency lookup table for planning: the measured ONNX Runtime time of every Conv/Linear layer shape a
plan can produce, so the planner prices a candidate without exporting and timing it.

Each entry is one layer (Conv + ReLU, as ORT fuses them, or a Gemm) built directly as a one-node ONNX model
and timed on the target runtime (ORT CPU provider, the run's thread count, the target batch size), minus
the cost of running an empty model; entries are measured on first use and memoised. A model's latency is
predicted as ``c0 + k * sum(layer entries)``: ``k`` and ``c0`` are fitted to end-to-end measurements
(the dense model first, then each measured candidate), because a whole graph is not exactly the sum of its
layers (memory traffic, the non-conv operators, per-node overhead).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from distillprune.measure.latency import LatencyConfig, windows
from distillprune.prune.heads import find_attentions


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


def _layer_onnx(shape: LayerShape, batch: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if shape.kind == "conv":
        w = rng.standard_normal((shape.cout, shape.cin // shape.groups, *shape.kernel)).astype(np.float32) * 0.1
        b = np.zeros(shape.cout, np.float32)
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, shape.cin, *shape.hw])
        nodes = [
            helper.make_node(
                "Conv",
                ["input", "w", "b"],
                ["c"],
                kernel_shape=list(shape.kernel),
                strides=list(shape.stride),
                dilations=list(shape.dilation),
                pads=[shape.padding[0], shape.padding[1]] * 2,
                group=shape.groups,
            ),
            helper.make_node("Relu", ["c"], ["out"]),
        ]
    else:
        w = rng.standard_normal((shape.cout, shape.cin)).astype(np.float32) * 0.1
        b = np.zeros(shape.cout, np.float32)
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch * shape.hw[0], shape.cin])
        nodes = [helper.make_node("Gemm", ["input", "w", "b"], ["out"], transB=1)]
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        nodes, "layer", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _empty_onnx(batch: int) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "empty", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


class LatencyTable:
    """Per-layer ORT latency (ms) at one batch size, measured on demand; a fitted whole-model predictor."""

    def __init__(self, cfg: LatencyConfig, batch_size: int):
        self.cfg, self.batch = cfg, batch_size
        self._ms: dict[LayerShape, float] = {}
        self.measured = 0  # entries timed (for the plan's report)
        self.k, self.c0 = 1.0, 0.0
        self._points: list[tuple[float, float]] = []  # (sum of entries, measured ms)
        self._overhead = self._time(_empty_onnx(batch_size), (batch_size, 1))

    def _time(self, blob: bytes, shape: tuple[int, ...]) -> float:
        from distillprune.export.onnx import session

        sess = session(blob, threads=self.cfg.threads)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        # the fastest of a few short windows: on a loaded machine the minimum is the stable statistic
        return min(windows(lambda: sess.run(None, {"input": x}), warmup=3, repeats=5, min_window_s=0.004))

    def ms(self, shape: LayerShape) -> float:
        if shape not in self._ms:
            dims = (self.batch, shape.cin, *shape.hw) if shape.kind == "conv" else (self.batch * shape.hw[0], shape.cin)
            self._ms[shape] = max(self._time(_layer_onnx(shape, self.batch), dims) - self._overhead, 1e-4)
            self.measured += 1
        return self._ms[shape]

    def raw(self, shapes: Iterable[LayerShape]) -> float:
        return sum(self.ms(s) for s in shapes)

    def predict(self, raw: float) -> float:
        return self.c0 + self.k * raw

    def fit(self, raw: float, measured_ms: float) -> None:
        """Add an end-to-end measurement and refit ``c0 + k * raw`` (through the origin with one point,
        least squares with more, never a negative intercept or slope)."""
        self._points.append((raw, measured_ms))
        if len(self._points) == 1 or len({r for r, _ in self._points}) == 1:
            self.k, self.c0 = measured_ms / max(raw, 1e-9), 0.0
            return
        xs, ys = zip(*self._points, strict=True)
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        c0 = my - k * mx
        if k <= 0 or c0 < 0:
            k, c0 = sum(ys) / sum(xs), 0.0
        self.k, self.c0 = k, c0
