"""How the latency table times one layer, and a whole model, on ONNX Runtime's CPU provider.

A layer is timed *in context*: its graph is a 1x1 conv, the layer (Conv + ReLU, as ORT fuses them), and another
1x1 conv, and its entry is the layer's own kernel time read from ONNX Runtime's profiler. Inside a network a
conv's input comes from another conv and its output goes to one, so ORT keeps the activations in its blocked
(NCHWc) layout between them; a layer timed alone would also pay the two layout conversions around it and the
session's per-run overhead, and a narrow conv alone runs a slower kernel than inside a network (measured on a
half-width ResNet-56: its layers' in-context entries sum to 1.24 ms, its convs' kernel times inside the
network to 1.25 ms, the same convs' kernels in one-layer graphs to 1.46 ms). A Linear is one Gemm.

Every figure is the *fastest* of many runs (:func:`fastest_ms`; per node for :func:`node_times`): a run the
scheduler interrupted is long and a clean one is not, so on a machine shared with other work the fastest
run is the statistic that repeats (on a 2-core machine at load 7-9 a layer's fastest run repeated within ~1%,
where the fastest of five 4 ms windows varied 2-3x).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: the nodes of a layer's graph whose kernel time is its entry (the 1x1 convs around it are named pre/post);
#: ORT names a node it rewrites after its output ("layer_out_nchwc"), so entries match by this prefix
LAYER = "layer"


def fastest_ms(run: Callable[[], object], min_calls: int = 20, min_s: float = 0.03, max_calls: int = 5000) -> float:
    """The fastest single call of ``run`` (ms), over at least ``min_calls`` calls and ``min_s`` seconds (at most
    ``max_calls``), after three warm-up calls."""
    for _ in range(3):
        run()
    best, n, t0 = float("inf"), 0, time.perf_counter()
    while n < max_calls and (n < min_calls or time.perf_counter() - t0 < min_s):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best * 1e3


def _options(threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as every latency the library reports
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def node_times(
    blob: bytes, feeds: dict[str, np.ndarray], threads: int, min_runs: int = 50, min_s: float = 0.03
) -> dict[str, tuple[str, float]]:
    """Each node of the optimised graph, from ONNX Runtime's profiler: ``name -> (operator, fastest run in ms)``
    over at least ``min_runs`` runs and ``min_s`` seconds. A node's own kernel time, without the session's
    per-run overhead. Empty when the profiler recorded no node (a runtime whose profile format differs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="distillprune-profile-") as tmp:
        sess = ort.InferenceSession(
            blob, _options(threads, os.path.join(tmp, "profile")), providers=["CPUExecutionProvider"]
        )
        n, t0 = 0, time.perf_counter()
        while n < min_runs or time.perf_counter() - t0 < min_s:
            sess.run(None, feeds)
            n += 1
        path = sess.end_profiling()
        try:
            with open(path, encoding="utf-8") as f:
                events = json.load(f)
        except (OSError, ValueError):
            events = []
    best: dict[str, tuple[str, float]] = {}
    for e in events if isinstance(events, list) else []:
        if not isinstance(e, dict) or e.get("cat") != "Node" or not isinstance(e.get("dur"), (int, float)):
            continue
        name = str(e.get("name", ""))
        if not name.endswith("_kernel_time"):
            continue
        args = e.get("args")
        op = str(args.get("op_name", "?")) if isinstance(args, dict) else "?"
        ms = float(e["dur"]) / 1e3
        if name not in best or ms < best[name][1]:
            best[name] = (op, ms)
    return best


def session_ms(blob: bytes, feeds: dict[str, np.ndarray], threads: int, min_s: float = 0.03) -> float:
    """The fastest call of a whole session (ms): what a layer's entry falls back on without a profile."""
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, _options(threads), providers=["CPUExecutionProvider"])
    return fastest_ms(lambda: sess.run(None, feeds), min_s=min_s)


def layer_onnx(kind: str, shape: Any, batch: int) -> bytes:
    """The graph a layer's entry is timed in: a conv between two 1x1 convs (see the module docstring), or a
    Gemm. ``shape``: a ``latency_table.LayerShape``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits: list[Any] = []
    nodes: list[Any] = []

    def add(name: str, x: str, w: np.ndarray, op: str = "Conv", relu: bool = True, **attrs: Any) -> str:
        inits.append(numpy_helper.from_array(w * np.float32(0.1), f"{name}_w"))
        inits.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), f"{name}_b"))
        out = f"{name}_out"
        nodes.append(helper.make_node(op, [x, f"{name}_w", f"{name}_b"], [f"{name}_c" if relu else out], name, **attrs))
        if relu:
            nodes.append(helper.make_node("Relu", [f"{name}_c"], [out], f"{name}_relu"))
        return out

    def w(*dims: int) -> np.ndarray:
        return rng.standard_normal(dims).astype(np.float32)

    if kind == "conv":
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, shape.cin, *shape.hw])
        a = add("pre", "input", w(shape.cin, shape.cin, 1, 1), kernel_shape=[1, 1])
        b = add(
            LAYER,
            a,
            w(shape.cout, shape.cin // shape.groups, *shape.kernel),
            kernel_shape=list(shape.kernel),
            strides=list(shape.stride),
            dilations=list(shape.dilation),
            pads=[shape.padding[0], shape.padding[1]] * 2,
            group=shape.groups,
        )
        out = add("post", b, w(shape.cout, shape.cout, 1, 1), kernel_shape=[1, 1])
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch * shape.hw[0], shape.cin])
        out = add(LAYER, "input", w(shape.cout, shape.cin), op="Gemm", relu=False, transB=1)
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "layer", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def empty_onnx(batch: int) -> bytes:
    """A graph that does nothing: the session's per-run overhead."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "empty", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
