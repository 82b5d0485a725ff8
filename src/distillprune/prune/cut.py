"""The one cutter: every structural width cut goes through it -- the channel groups of a CNN (a uniform step or a
planned one), the whole heads of a hand-written attention, an encoder's heads and FFN neurons.

Items are cut one at a time, each as a transaction: cut, and the model must still be whole afterwards -- every
conv's ``groups`` dividing its channels (a depthwise conv keeps ``groups == channels``), every weight matching
its layer's sizes, and a forward pass giving the output shape it gave before. A structural cut (:class:`Cut`:
heads, neurons) must also compute what the model computed with the removed parts' value rows zeroed (those
heads or neurons then add exactly nothing). An item that fails is rolled back and named, with the reason, in
the result's ``skipped``; the others stay cut. What may be cut at all was decided before (``prune.channels``:
the enumerator and its pre-checks), so the cutter checks results, not patterns.

An ONNX export (and an ONNX Runtime run) catches what a PyTorch forward accepts but a deployed graph does
not; it costs far more than a forward, so it runs once per step, after all groups. Only when it fails is the
step replayed on prefixes of the kept groups (bisection: ~log2(n) exports) to find the group that broke it,
which is skipped; the rest is cut again and checked again. A module called more than once is cut once for
every use, so its cut must pass the checks of the whole model -- otherwise it is rolled back and named with
the number of calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.prune.channels import SkippedGroup, describe, names_of
from distillprune.prune.heads import HeadCut


class Cut(Protocol):
    """A cut the cutter applies itself (not a Torch-Pruning group): whole heads of a hand-written attention
    (``prune.heads.HeadCut``), an encoder layer's heads or FFN neurons (``transformers.surgery.LayerCut``).
    ``layer`` is named when it is left whole; ``noun`` and ``what()`` say what it removes; ``touched`` lists the
    modules it changes (their state is kept to roll it back); ``silenced`` the parameters and rows whose zeroing
    makes the model compute what it computes after the cut."""

    @property
    def layer(self) -> str: ...
    @property
    def noun(self) -> str: ...
    def what(self) -> str: ...
    def touched(self, model: nn.Module) -> list[nn.Module]: ...
    def silenced(self, model: nn.Module) -> list[tuple[torch.Tensor, list[int]]]: ...
    def apply(self, model: nn.Module) -> None: ...


#: what a cutter is fed: a group to cut, a cut of its own, or a group that already failed before it could be
#: built (named)
Item: TypeAlias = tp.Group | Cut | SkippedGroup
#: an item the cutter kept, and Torch-Pruning's history entries it added (none for a ``Cut``)
Kept: TypeAlias = tuple[tp.Group | Cut, list[list]]


@dataclass
class CutResult:
    """What a step cut: the history entries of the kept groups, the cuts kept, what was left whole and why, and
    the cost."""

    entries: list[list] = field(default_factory=list)
    cuts: list[Any] = field(default_factory=list)  # the ``Cut`` items kept, in order
    skipped: list[SkippedGroup] = field(default_factory=list)
    forwards: int = 0
    exports: int = 0
    seconds: float = 0.0

    @property
    def heads(self) -> list[dict[str, Any]]:
        """``HeadCut.to_dict()`` of the hand-written attention heads cut (what ``ChannelsOp.heads`` replays)."""
        return [c.to_dict() for c in self.cuts if isinstance(c, HeadCut)]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def outputs(model: nn.Module, example: Batch) -> torch.Tensor | None:
    """The model's output on ``example`` in eval mode, without gradients (None: not a tensor)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = call(model, example)
    finally:
        model.train(was)
    return out if isinstance(out, torch.Tensor) else None


def checked_cut(model: nn.Module, cut: Cut, example: Batch | None) -> str | None:
    """Apply ``cut`` and check that the model computes what it computed with the cut's silenced rows set to
    zero; why not (the cut is then still applied: the caller rolls it back), or None."""
    reference = None
    if example is not None:
        saved = [(t, rows, t[rows].clone()) for t, rows in cut.silenced(model)]
        with torch.no_grad():
            for t, rows, _ in saved:
                t[rows] = 0
        try:
            reference = outputs(model, example)
        finally:
            with torch.no_grad():
                for t, rows, old in saved:
                    t[rows] = old
    cut.apply(model)
    if reference is None or example is None:
        return None
    out = outputs(model, example)  # (raises when the forward no longer runs: the caller names it)
    if out is None or out.shape != reference.shape:
        return f"the output changed shape ({tuple(reference.shape)} -> {None if out is None else tuple(out.shape)})"
    scale = float(reference.abs().max()) or 1.0
    err = float((out.float() - reference.float()).abs().max())
    if err > 1e-4 * scale + 1e-6:
        return (
            f"the forward does not drop the removed {cut.noun} (max difference {err:.3g} from the model with their "
            "values zeroed): it does not split them by the sizes it holds"
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
    def of(cls, modules: list[nn.Module], dg: tp.DependencyGraph | None) -> _State:
        if dg is None:
            return cls(snapshot(modules), 0, {}, {}, [])
        nodes = dict(dg.module2node)
        return cls(
            snapshot(modules),
            len(dg._pruning_history),
            nodes,
            dict(dg._param_to_name),
            [(n, n.module) for n in nodes.values()],
        )

    def restore(self, dg: tp.DependencyGraph | None) -> None:
        restore(self.modules)
        if dg is None:
            return
        del dg._pruning_history[self.history :]
        dg.module2node.clear()
        dg.module2node.update(self.nodes)
        dg._param_to_name.clear()
        dg._param_to_name.update(self.param_names)
        for node, module in self.node_modules:
            node.module = module


class Cutter:
    """Cuts items of one model transactionally (see the module docstring): the groups of one dependency graph
    ``dg`` (None when only ``Cut`` items come), checked on ``example`` (one ONNX check per step with ``onnx``)."""

    def __init__(self, model: nn.Module, dg: tp.DependencyGraph | None, example: Batch | None, onnx: bool = True):
        self.model, self.dg, self.example, self.onnx = model, dg, example, onnx
        self.names = names_of(model)
        self.depthwise: set[nn.Module] = {
            m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels
        }
        self.calls: dict[nn.Module, int] = {}
        self.out_shape = self._forward(count_calls=True)
        self.result = CutResult()

    def _modules(self) -> list[nn.Module]:
        if self.dg is None:
            return list(self.model.modules())
        ops = (m for m in self.dg.module2node if isinstance(m, nn.Module) and not isinstance(m, nn.Parameter))
        return list({**dict.fromkeys(self.model.modules()), **dict.fromkeys(ops)})

    def _forward(self, count_calls: bool = False) -> tuple[int, ...] | None:
        if self.example is None:
            return None
        hooks = []
        if count_calls:  # which modules run more than once (a shared layer): named when their cut fails
            for m in self.model.modules():
                hooks.append(m.register_forward_hook(self._count))
        try:
            out = outputs(self.model, self.example)
        finally:
            for h in hooks:
                h.remove()
        return None if out is None else tuple(out.shape)

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

    def _modules_of(self, item: tp.Group | Cut) -> list[nn.Module]:
        return [dep.target.module for dep, _ in item] if isinstance(item, tp.Group) else item.touched(self.model)

    def _reason(self, item: tp.Group | Cut, why: str) -> str:
        for m in self._modules_of(item):
            n = self.calls.get(m, 0)
            if n > 1:
                name = self.names.get(m, "?")
                return f"{why}; `{name}` is called {n} times and its cut must fit every use"
        return why

    def _what(self, item: tp.Group | Cut) -> str:
        return describe(item, self.names) if isinstance(item, tp.Group) else item.what()

    def _skip(self, item: tp.Group | Cut, reason: str) -> None:
        name = self.names.get(item[0].dep.target.module, "?") if isinstance(item, tp.Group) else item.layer
        self.result.skipped.append(SkippedGroup(name, reason + ", so it was left whole"))

    def try_cut(self, cut: Cut) -> bool:
        """Apply a cut of its own or roll it back (named in ``skipped``); whether it stays."""
        state = _State.of(self._modules(), self.dg)
        try:
            fault = checked_cut(self.model, cut, self.example) or self._fault()
        except Exception as e:  # noqa: BLE001 - a cut model's forward raises anything
            fault = f"the model no longer runs ({_error(e)})"
        if fault is None:
            return True
        state.restore(self.dg)
        self._skip(cut, self._reason(cut, f"cutting {cut.what()}: {fault}"))
        return False

    def try_group(self, group: tp.Group) -> list[list] | None:
        """Cut one group or roll it back (named in ``skipped``); the history entries it added, or None."""
        assert self.dg is not None
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

    def cut(self, items: Iterable[Item]) -> CutResult:
        """Cut every item in turn (each kept or rolled back), then check the whole step once through ONNX. When
        iterating ``items`` raises, the whole step is rolled back and the error raised."""
        t0 = time.perf_counter()
        before = _State.of(self._modules(), self.dg)
        kept: list[Kept] = []
        try:
            for item in items:
                if isinstance(item, SkippedGroup):
                    self.result.skipped.append(item)
                elif isinstance(item, tp.Group):
                    entries = self.try_group(item)
                    if entries:
                        kept.append((item, entries))
                elif self.try_cut(item):
                    kept.append((item, []))
        except Exception:
            self._replay([], before)
            raise
        if kept and self.onnx and self.example is not None:
            kept = self._onnx_checked(kept, before)
        self.result.entries = [e for _, entries in kept for e in entries]
        self.result.cuts = [item for item, _ in kept if not isinstance(item, tp.Group)]
        self.result.seconds = round(time.perf_counter() - t0, 3)
        return self.result

    def _onnx_fault(self) -> str | None:
        from distillprune.export.onnx import onnx_bytes, session

        assert isinstance(self.example, torch.Tensor)
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
            if not isinstance(item, tp.Group):
                item.apply(self.model)
            for name, out, idxs in entries:
                assert self.dg is not None
                module = self.model.get_submodule(name)
                fns = self.dg.get_pruner_of_module(module)
                fn = fns.prune_out_channels if out else fns.prune_in_channels
                self.dg.get_pruning_group(module, fn, idxs).prune()

    def _onnx_checked(self, kept: list[Kept], before: _State) -> list[Kept]:
        """``kept`` less the items whose cut breaks the ONNX graph, found by bisection on prefixes."""
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
            self._skip(item, self._reason(item, f"cutting {self._what(item)}: {fault}"))
            self._replay(kept, before)
        return kept
