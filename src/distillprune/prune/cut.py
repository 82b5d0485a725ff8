"""The one channel cutter: every width cut (a uniform ratio step or a planned step) goes through it.

Groups are cut one at a time, each as a transaction: the group is checked for the patterns Torch-Pruning is
known to mishandle (a concat or split feeding a grouped conv, a raw ``nn.Parameter`` whose channel dimension
cannot be told), cut, and the model must still be whole afterwards -- every conv's ``groups`` dividing its
channels (a depthwise conv keeps ``groups == channels``), every weight matching its layer's sizes, and a
forward pass giving the output shape it gave before. A group that fails is rolled back and named, with the
reason, in the result's ``skipped``; the others stay cut.

An ONNX export (and an ONNX Runtime run) catches what a PyTorch forward accepts but a deployed graph does
not; it costs far more than a forward, so it runs once per step, after all groups. Only when it fails is the
step replayed on prefixes of the kept groups (bisection: ~log2(n) exports) to find the group that broke it,
which is skipped; the rest is cut again and checked again.

Attention heads are cut the same way, as an item of their own (:class:`prune.heads.HeadCut`: whole heads out of
q, k, v and the output projection, the head count attribute lowered), checked against the model with those
heads' values zeroed, then like any group; a module called more than once is cut once for every use, so its
cut must pass the checks of the whole model -- otherwise it is rolled back and named with the number of calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from distillprune.prune.heads import HeadCut, checked_cut
from distillprune.prune.safety import SkippedGroup, describe, names_of, unsupported

#: what a cutter is fed: a group to cut, whole attention heads to cut, or a group that already failed before it
#: could be built (named)
Item: TypeAlias = tp.Group | HeadCut | SkippedGroup
#: a cut the cutter kept: the group or heads, and Torch-Pruning's history entries it added (none for heads)
Kept: TypeAlias = tuple[tp.Group | HeadCut, list[list]]


@dataclass
class CutResult:
    """What a step cut: the history entries of the kept groups, what was left whole and why, and the cost."""

    entries: list[list] = field(default_factory=list)
    heads: list[dict[str, Any]] = field(default_factory=list)  # HeadCut.to_dict() of the heads cut
    skipped: list[SkippedGroup] = field(default_factory=list)
    forwards: int = 0
    exports: int = 0
    seconds: float = 0.0


class StepFailed(Exception):
    """A step the cutter rolled back whole: why, and the group that failed when known."""

    def __init__(self, error: str, group: tp.Group | None = None):
        super().__init__(error)
        self.error, self.group = error, group


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def raw_parameter(group: tp.Group) -> str | None:
    """Why a bare ``nn.Parameter`` in ``group`` cannot be cut safely, or None. Torch-Pruning cuts such a
    parameter along its last non-singleton dimension: right for a per-channel scale ``(C,)`` / ``(C, 1, 1)``
    and a broadcast token ``(1, N, C)``, wrong for a weight used through ``F.conv2d`` / ``F.linear``
    (``(out, in, kh, kw)``), whose channel dimension is not the last."""
    dg = group._DG
    for dep, _ in group:
        p = dep.target.module
        if not isinstance(p, nn.Parameter):
            continue
        wide = [d for d in p.shape if d > 1]
        if len(wide) <= 1 or (p.dim() >= 3 and p.shape[0] == 1):
            continue
        name = dg._param_to_name.get(p, "?")
        return (
            f"raw parameter `{name}` {tuple(p.shape)} is used by a functional op (F.conv2d, matmul...): which of "
            "its dimensions are channels cannot be told"
        )
    return None


def layer_fault(model: nn.Module, depthwise: set[nn.Module]) -> str | None:
    """The first layer whose sizes no longer agree with its weights, or None."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            if m.in_channels % m.groups or m.out_channels % m.groups:
                return f"`{name}`: {m.in_channels} -> {m.out_channels} channels not divisible by groups={m.groups}"
            if m in depthwise and not m.groups == m.in_channels == m.out_channels:
                return f"`{name}`: a depthwise conv must keep groups == channels (groups={m.groups})"
            # torch stores a conv's weight (out, in / groups, ...), a transposed conv's (in, out / groups, ...)
            want = (
                (m.in_channels, m.out_channels // m.groups)
                if m.transposed
                else (m.out_channels, m.in_channels // m.groups)
            )
            if tuple(w.shape[:2]) != want or (m.bias is not None and m.bias.numel() != m.out_channels):
                return f"`{name}`: weight {tuple(w.shape)} does not fit {m.in_channels} -> {m.out_channels}"
        elif isinstance(m, nn.Linear) and tuple(m.weight.shape) != (m.out_features, m.in_features):
            return f"`{name}`: weight {tuple(m.weight.shape)} does not fit {m.in_features} -> {m.out_features}"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            sizes = {m.num_features} | {t.numel() for t in (m.weight, m.running_mean) if t is not None}
            if len(sizes) > 1:
                return f"`{name}`: BatchNorm of {m.num_features} features holds tensors of sizes {sorted(sizes)}"
    return None


Snapshot = list[tuple[nn.Module, dict, dict, dict, dict]]


def snapshot(modules: Iterable[nn.Module]) -> Snapshot:
    # Torch-Pruning replaces parameters and buffers by new, smaller tensors and rewrites attributes
    # (in_channels, a concat's offsets...): each module's attribute dicts (shallow copies) undo a cut, and the
    # modules stay the same objects, so the dependency graph stays valid after a rollback. Lists are copied:
    # Torch-Pruning edits a concat's ``concat_sizes`` in place
    return [
        (
            m,
            {k: list(v) if isinstance(v, list) else v for k, v in m.__dict__.items()},
            dict(m._parameters),
            dict(m._buffers),
            dict(m._modules),
        )
        for m in modules
    ]


def restore(snap: Snapshot) -> None:
    for m, attrs, params, buffers, modules in snap:
        m.__dict__.clear()
        m.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in attrs.items()})  # (a later cut
        # edits them in place again: the snapshot keeps its own copy)
        m.__dict__.update(_parameters=dict(params), _buffers=dict(buffers), _modules=dict(modules))


@dataclass
class _State:
    """Everything a cut changes: the modules' attributes, and the dependency graph's history and its maps from
    parameters to nodes and names (a bare parameter is replaced by a new, smaller one)."""

    modules: Snapshot
    history: int
    nodes: dict
    param_names: dict
    node_modules: list[tuple[Any, Any]]  # (Torch-Pruning's Node, the module or parameter it stands for)

    @classmethod
    def of(cls, modules: list[nn.Module], dg: tp.DependencyGraph) -> _State:
        nodes = dict(dg.module2node)
        return cls(
            snapshot(modules),
            len(dg._pruning_history),
            nodes,
            dict(dg._param_to_name),
            [(n, n.module) for n in nodes.values()],
        )

    def restore(self, dg: tp.DependencyGraph) -> None:
        restore(self.modules)
        del dg._pruning_history[self.history :]
        dg.module2node.clear()
        dg.module2node.update(self.nodes)
        dg._param_to_name.clear()
        dg._param_to_name.update(self.param_names)
        for node, module in self.node_modules:
            node.module = module


class Cutter:
    """Cuts groups of one dependency graph on ``model`` transactionally (see the module docstring)."""

    def __init__(self, model: nn.Module, dg: tp.DependencyGraph, example: torch.Tensor | None, onnx: bool = True):
        self.model, self.dg, self.example, self.onnx = model, dg, example, onnx
        self.names = names_of(model)
        self.depthwise: set[nn.Module] = {
            m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels
        }
        self.calls: dict[nn.Module, int] = {}
        self.out_shape = self._forward(count_calls=True)
        self.result = CutResult()

    def _modules(self) -> list[nn.Module]:
        return list({**dict.fromkeys(self.model.modules()), **dict.fromkeys(self._dg_ops())})

    def _dg_ops(self) -> Iterator[nn.Module]:
        return (m for m in self.dg.module2node if isinstance(m, nn.Module) and not isinstance(m, nn.Parameter))

    def _forward(self, count_calls: bool = False) -> tuple[int, ...] | None:
        if self.example is None:
            return None
        hooks = []
        if count_calls:  # which modules run more than once (a shared layer): named when their cut fails
            for m in self.model.modules():
                hooks.append(m.register_forward_hook(self._count))
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(self.example)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was)
        return tuple(out.shape) if isinstance(out, torch.Tensor) else None

    def _count(self, m: nn.Module, _inputs: object, _output: object) -> None:
        self.calls[m] = self.calls.get(m, 0) + 1

    def _fault(self) -> str | None:
        fault = layer_fault(self.model, self.depthwise)
        if fault is None and self.example is not None:
            self.result.forwards += 1
            try:
                shape = self._forward()
            except Exception as e:  # noqa: BLE001 - a cut model's forward raises anything
                return f"the model no longer runs ({_error(e)})"
            if shape != self.out_shape:
                return f"the output changed shape ({self.out_shape} -> {shape})"
        return fault

    def _modules_of(self, item: tp.Group | HeadCut) -> list[nn.Module]:
        if isinstance(item, HeadCut):
            return [self.model.get_submodule(n) for n in (item.attention, *item.qkv, item.proj)]
        return [dep.target.module for dep, _ in item]

    def _reason(self, item: tp.Group | HeadCut, why: str) -> str:
        for m in self._modules_of(item):
            n = self.calls.get(m, 0)
            if n > 1:
                name = self.names.get(m, "?")
                return f"{why}; `{name}` is called {n} times and its cut must fit every use"
        return why

    def _skip(self, item: tp.Group | HeadCut, reason: str) -> None:
        name = item.qkv[0] if isinstance(item, HeadCut) else self.names.get(item[0].dep.target.module, "?")
        self.result.skipped.append(SkippedGroup(name, reason + ", so it was left whole"))

    @staticmethod
    def _what(item: HeadCut) -> str:
        return f"heads {item.removed} of the {item.heads} of the attention `{item.attention}`"

    def try_heads(self, cut: HeadCut) -> bool:
        """Cut whole heads or roll them back (named in ``skipped``); whether they stay cut."""
        state = _State.of(self._modules(), self.dg)
        try:
            fault = checked_cut(self.model, cut, self.example) or self._fault()
        except Exception as e:  # noqa: BLE001 - a cut attention's forward raises anything
            fault = f"the model no longer runs ({_error(e)})"
        if fault is None:
            return True
        state.restore(self.dg)
        self._skip(cut, self._reason(cut, f"cutting {self._what(cut)}: {fault}"))
        return False

    def try_group(self, group: tp.Group) -> list[list] | None:
        """Cut one group or roll it back (named in ``skipped``); the history entries it added, or None."""
        pattern = unsupported(group, self.names) or raw_parameter(group)
        if pattern is not None:
            self._skip(group, pattern)
            return None
        if not self.dg.check_pruning_group(group):
            self._skip(group, "the cut would empty one of its layers")
            return None
        state = _State.of(self._modules(), self.dg)
        mark = state.history
        try:
            group.prune()
            fault = self._fault()
        except Exception as e:  # noqa: BLE001 - Torch-Pruning raises anything on a graph it mishandles
            fault = f"Torch-Pruning failed on it ({_error(e)})"
        if fault is None:
            return [list(h) for h in self.dg._pruning_history[mark:]]
        state.restore(self.dg)
        self._skip(group, self._reason(group, f"cutting {describe(group, self.names)}: {fault}"))
        return None

    def cut(self, items: Iterable[Item], max_skips: int | None = None) -> CutResult:
        """Cut every item in turn (each kept or rolled back), then check the whole step once through ONNX.

        All or nothing around that: when iterating ``items`` raises (Torch-Pruning's pruner scores every group
        before it yields one), or more than ``max_skips`` groups fail, the whole step is rolled back and
        :class:`StepFailed` raised."""
        t0 = time.perf_counter()
        before = _State.of(self._modules(), self.dg)
        kept: list[Kept] = []
        try:
            for item in items:
                if isinstance(item, SkippedGroup):
                    self.result.skipped.append(item)
                    continue
                if isinstance(item, HeadCut):
                    entries: list[list] | None = [] if self.try_heads(item) else None
                else:
                    entries = self.try_group(item) or None
                if entries is not None:
                    kept.append((item, entries))
                elif max_skips is not None and len(self.result.skipped) > max_skips:
                    raise StepFailed(self.result.skipped[-1].reason, item)
        except Exception as e:
            self._replay([], before)
            raise e if isinstance(e, StepFailed) else StepFailed(_error(e)) from e
        if kept and self.onnx and self.example is not None:
            kept = self._onnx_checked(kept, before)
        self.result.entries = [e for _, entries in kept for e in entries]
        self.result.heads = [item.to_dict() for item, _ in kept if isinstance(item, HeadCut)]
        self.result.seconds = round(time.perf_counter() - t0, 3)
        return self.result

    def _onnx_fault(self) -> str | None:
        from distillprune.export.onnx import onnx_bytes, session

        assert self.example is not None
        self.result.exports += 1
        x = self.example[:1].detach().float().cpu()
        try:
            sess = session(onnx_bytes(self.model, tuple(x.shape[1:])))
            out = sess.run(None, {"input": np.ascontiguousarray(x.numpy())})[0]
        except Exception as e:  # noqa: BLE001 - the exporter and ONNX Runtime raise anything
            return f"its ONNX export no longer runs ({_error(e)})"
        if self.out_shape is not None and tuple(out.shape[1:]) != self.out_shape[1:]:
            return f"its ONNX output changed shape ({self.out_shape} -> {tuple(out.shape)})"
        return None

    def _replay(self, kept: list[Kept], before: _State) -> None:
        """Back to the model before the step, then the cuts of ``kept`` again (their recorded root indices)."""
        before.restore(self.dg)
        for item, entries in kept:
            if isinstance(item, HeadCut):
                item.apply(self.model)
            for name, out, idxs in entries:
                module = self.model.get_submodule(name)
                fns = self.dg.get_pruner_of_module(module)
                fn = fns.prune_out_channels if out else fns.prune_in_channels
                self.dg.get_pruning_group(module, fn, idxs).prune()

    def _onnx_checked(self, kept: list[Kept], before: _State) -> list[Kept]:
        """``kept`` less the groups whose cut breaks the ONNX graph, found by bisection on prefixes."""
        while kept:
            fault = self._onnx_fault()
            if fault is None:
                return kept
            lo, hi = 0, len(kept)  # the prefix kept[:hi] fails; find the shortest failing prefix
            while hi - lo > 1:
                mid = (lo + hi) // 2
                self._replay(kept[:mid], before)
                found = self._onnx_fault()
                if found is None:
                    lo = mid
                else:
                    hi, fault = mid, found
            if hi == 1:  # the first group alone fails: unless the uncut model fails too
                self._replay([], before)
                if self._onnx_fault() is not None:  # the uncut model does not export either: not the cuts'
                    self._replay(kept, before)
                    return kept
            item, _ = kept.pop(hi - 1)
            what = self._what(item) if isinstance(item, HeadCut) else describe(item, self.names)
            self._skip(item, self._reason(item, f"cutting {what}: {fault}"))
            self._replay(kept, before)
        return kept
