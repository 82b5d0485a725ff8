"""Which layers a recovery pass re-fits, in forward order, and with which target.

``consumers``: the layers that read a cut tensor -- a Conv2d/Linear that lost input channels, and the first
layers after a removed block (every layer that reads the same tensor, e.g. a downsampling block's conv and its
shortcut). ``downstream``: every layer from the first consumer on (each one corrects what is left of the
error above it; the default, see docs/benchmarks.md). With ``stream``, the last layer of each surviving
residual block downstream of a cut -- identity or projection shortcut -- is fitted to the block's output
(``lstsq.Stream``).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from distillprune.prune.recovery.capture import execution_order
from distillprune.prune.recovery.lstsq import Stream, Target, out_channels, why_not
from distillprune.prune.recovery.relu import relu_layers
from distillprune.prune.recovery.report import LayerRecovery
from distillprune.prune.residual import _AFTER, _is_add, _passthrough, _strip, _trace, find_residuals

LAYERS = (nn.Conv2d, nn.Linear)


def _inputs(model: nn.Module, x: Tensor, paths: list[str]) -> dict[str, int]:
    """Identity of the tensor each layer reads in one forward (layers reading one tensor share it)."""
    seen: dict[str, int] = {}
    keep: list[Tensor] = []  # hold the tensors so their storage is not reused within the forward
    handles = []
    for p in paths:

        def hook(m: nn.Module, a: tuple, p: str = p) -> None:
            seen.setdefault(p, a[0].data_ptr())
            keep.append(a[0])

        handles.append(model.get_submodule(p).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def consumers(pruned: nn.Module, dense: nn.Module, order: list[str], dense_order: list[str], x: Tensor) -> set[str]:
    """The layers that read a cut tensor (see the module docstring)."""
    found = set()
    for p in order:
        m, m0 = pruned.get_submodule(p), dense.get_submodule(p)
        if isinstance(m, LAYERS) and isinstance(m0, LAYERS) and m.weight.shape[1] < m0.weight.shape[1]:
            found.add(p)
    present, gap, after = set(order), False, set()
    for p in dense_order:
        if p not in present:
            gap = True
        elif gap:
            after.add(p)
            gap = False
    if after:
        ids = _inputs(pruned, x, order)
        shared = {ids[p] for p in after if p in ids}
        found |= after | {p for p in order if ids.get(p) in shared}
    return found


def _streams(pruned: nn.Module, dense: nn.Module, x: Tensor) -> dict[str, Stream]:
    """The last layer of each identity-shortcut block whose branch ends ``layer -> bn``, keyed by layer path."""
    # leaves that compute something (an identity shortcut is called last in ``f(x) + shortcut(x)``)
    leaves = {
        n for n, m in pruned.named_modules() if not any(True for _ in m.children()) and not isinstance(m, nn.Identity)
    }
    order = execution_order(pruned, x, kinds=(nn.Module,))
    order = [p for p in order if p in leaves]
    dense_paths = {n for n, _ in dense.named_modules()}
    out: dict[str, Stream] = {}
    for r in find_residuals(pruned)[0]:
        if r.kind != "module" or r.path not in dense_paths:
            continue
        inside = [p for p in order if p.startswith(r.path + ".")]
        if len(inside) < 2:
            continue
        layer, bn = pruned.get_submodule(inside[-2]), pruned.get_submodule(inside[-1])
        if isinstance(layer, LAYERS) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            out[inside[-2]] = Stream(r.path, bn)
    return out


def _projections(pruned: nn.Module, dense: nn.Module) -> dict[str, Stream]:
    """The last layer of each block ``act(bn(layer(...)) + s(x))`` with a projection shortcut ``s`` (a child
    module called on the block's input, e.g. a downsampling conv + BN), keyed by layer path. Read from the
    block's one-level fx trace; a block fx cannot trace is left out (it keeps its plain per-layer target)."""
    dense_paths = {n for n, _ in dense.named_modules()}
    out: dict[str, Stream] = {}
    for name, m in pruned.named_modules():
        if not name or name not in dense_paths or isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue
        if not any(True for _ in m.children()):
            continue
        try:
            graph = _trace(m)
        except Exception:  # noqa: BLE001 -- data-dependent control flow and the like: not a plain block
            continue
        found = _projection(graph, m)
        if found is not None:
            layer, bn, shortcut = found
            out[f"{name}.{layer}"] = Stream(name, m.get_submodule(bn), shortcut=f"{name}.{shortcut}")  # type: ignore[arg-type]
    return out


def _projection(graph: fx.Graph, m: nn.Module) -> tuple[str, str, str] | None:
    """(layer, bn, shortcut) child names of ``act(bn(layer(...)) + shortcut(x))``, or None."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    outs = [n for n in graph.nodes if n.op == "output"]
    if len(inputs) != 1 or not outs or not isinstance(outs[0].args[0], fx.Node):
        return None
    n = outs[0].args[0]
    while not _is_add(n) and _passthrough(n, m, _AFTER) and n.args and isinstance(n.args[0], fx.Node):
        n = n.args[0]
    if not _is_add(n) or len(n.args) < 2:
        return None
    a, b = (_strip(v, m) for v in n.args[:2])
    for main, short in ((a, b), (b, a)):
        if not (isinstance(main, fx.Node) and isinstance(short, fx.Node)):
            continue
        if not (_call(short, m, nn.Module) and short.args and short.args[0] is inputs[0]):
            continue
        layer = main.args[0] if main.args else None
        if not (_call(main, m, nn.modules.batchnorm._BatchNorm) and isinstance(layer, fx.Node)):
            continue
        if _call(layer, m, LAYERS) and len(layer.users) == 1 and len(main.users) == 1:
            return str(layer.target), str(main.target), str(short.target)
    return None


def _call(n: fx.Node, m: nn.Module, kinds: type | tuple[type, ...]) -> bool:
    return (
        n.op == "call_module"
        and isinstance(m.get_submodule(str(n.target)), kinds)
        and not isinstance(m.get_submodule(str(n.target)), nn.Identity)
    )


def _shortcut_first(targets: list[Target]) -> list[Target]:
    """A projection-stream layer moves after the shortcut's own layers: its target reads their re-fit output."""
    out = list(targets)
    for t in targets:
        if t.stream is None or t.stream.shortcut is None:
            continue
        inside = [i for i, u in enumerate(out) if u.path.startswith(t.stream.shortcut + ".")]
        if inside:
            out.remove(t)
            out.insert(max(i for i, u in enumerate(out) if u.path.startswith(t.stream.shortcut + ".")) + 1, t)
    return out


def layer_targets(
    pruned: nn.Module, dense: nn.Module, x: Tensor, scope: str, stream: bool, relu: bool = False
) -> tuple[list[Target], list[LayerRecovery]]:
    """The layers to re-fit (forward order) and the ones that cannot be, with why."""
    dense_paths = dict(dense.named_modules())
    order = [p for p in execution_order(pruned, x) if p in dense_paths]
    dense_order = execution_order(dense, x)
    cut = consumers(pruned, dense, order, dense_order, x)
    first = min((order.index(p) for p in cut), default=len(order))
    chosen = order[first:] if scope == "downstream" else [p for p in order if p in cut]
    streams = {**_projections(pruned, dense), **_streams(pruned, dense, x)} if stream else {}
    if stream and scope == "consumers":
        chosen = [p for p in order if p in cut or (p in streams and order.index(p) > first)]
    gates = relu_layers(pruned) if relu else {}
    targets, skipped = [], []
    for p in chosen:
        m, m0 = pruned.get_submodule(p), dense_paths[p]
        why = why_not(m, m0)
        out = None if why else out_channels(m, m0)
        if why is None and out is None:
            why = "no channel map to the dense layer (its weights are not a subset of the dense ones)"
        if why is not None:
            skipped.append(LayerRecovery(p, skipped=why))
            continue
        assert out is not None
        st = streams.get(p) if order.index(p) > first or p in cut else None
        gate = gates.get(p)
        if gate is not None and gate.stream != (st is not None):
            gate = None  # a ReLU after a residual add gates a stream target only (and the reverse)
        targets.append(Target(p, out, st, gate))
    return _shortcut_first(targets), skipped
