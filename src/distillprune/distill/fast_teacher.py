"""A faster frozen teacher: BatchNorm folded into its convolutions, channels-last activations, and
optionally ``torch.compile``, on a copy that is checked against the original before it is used.

On a CPU the teacher's forward is a large share of a distillation step (ResNet-56 teaching a 2x
smaller student: about a third), and the teacher never trains. Its eval-mode BatchNorm is then a
fixed affine map, folded into the preceding convolution (Ioffe & Szegedy 2015; the usual inference
fold):

    BN(conv(x)) = gamma * (W x + b - mu) / sqrt(var + eps) + beta = W' x + b'
    W' = W * gamma / sqrt(var + eps),   b' = (b - mu) * gamma / sqrt(var + eps) + beta

A Conv->BN pair is folded only when the convolution's output feeds that BatchNorm alone and neither
module is a feature tap (a tap on either would see a different tensor). The fold runs on a deep copy:
the original teacher stays as it was (checkpoints, reports, mutual learning, taps). A teacher that
carries hooks of its own (someone watches its modules) is used unchanged, and so is one whose copy
does not reproduce its outputs and tapped features on the probe batch.
"""

from __future__ import annotations

import copy
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval

from distillprune.core.batch import Batch, NamedInputs
from distillprune.core.taps import FeatureTaps

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


@dataclass
class TeacherSpeed:
    """What the fast path did to the teacher (for reports and tests)."""

    folded: list[str] = field(default_factory=list)  # the convolutions that absorbed a BatchNorm
    channels_last: bool = False
    compiled: bool = False
    note: str = ""  # why the fast path was not (fully) used


def conv_bn_pairs(model: nn.Module, keep: AbstractSet[str] = frozenset()) -> list[tuple[str, str]]:
    """(conv, bn) module paths where the conv's output feeds only that BN; none named in ``keep``.

    Found on a ``torch.fx`` trace (raises what tracing raises for untraceable models)."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not n.args or not isinstance(n.args[0], torch.fx.Node):
            continue
        conv_node, bn = n.args[0], mods[n.target]
        if conv_node.op != "call_module" or len(conv_node.users) != 1:
            continue
        conv = mods[conv_node.target]
        if not any(type(conv) is c and type(bn) is b for c, b in _PAIRS):
            continue
        if bn.running_mean is None or calls[str(n.target)] > 1 or calls[str(conv_node.target)] > 1:
            continue  # batch statistics, or a module applied twice: not a fixed affine map of one conv
        if conv_node.target in keep or n.target in keep:
            continue
        pairs.append((str(conv_node.target), str(n.target)))
    return pairs


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def fold_batchnorm(model: nn.Module, keep: AbstractSet[str] = frozenset()) -> tuple[nn.Module, list[str]]:
    """An eval-mode deep copy of ``model`` with every foldable Conv->BN pair folded (BN -> Identity)."""
    folded = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(model, keep)
    for conv, bn in pairs:
        c, b = folded.get_submodule(conv), folded.get_submodule(bn)
        assert isinstance(c, _ConvNd) and isinstance(b, _BatchNorm)  # conv_bn_pairs found only such pairs
        _set(folded, conv, fuse_conv_bn_eval(c, b))
        _set(folded, bn, nn.Identity())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, [c for c, _ in pairs]


def _has_own_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _channels_last_safe(model: nn.Module) -> bool:
    """Convolutions in channels-last only where every channel count is a multiple of 8 (inputs of at
    most 4 channels excepted): torch 2.13's oneDNN kernels mis-handle some odd pruned shapes in that
    layout (see ``data.base.standard_layout``), and odd widths gain little from it anyway."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(
        c.out_channels % 8 == 0 and (c.in_channels % 8 == 0 or c.in_channels <= 4) for c in convs
    )


class FastTeacher(nn.Module):
    """Calls ``net`` (the folded copy) with channels-last inputs when ``channels_last``."""

    def __init__(self, net: nn.Module, channels_last: bool, compiled: bool):
        super().__init__()
        self.net = net
        self.channels_last = channels_last
        self._call = torch.compile(net) if compiled else net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._call(x)


def _matches(
    fast: nn.Module, fast_root: nn.Module, teacher: nn.Module, taps: list[str], probe: torch.Tensor, tol: float
) -> bool:
    def run(model: nn.Module, root: nn.Module) -> list[torch.Tensor]:
        with FeatureTaps(root, taps) as t, torch.no_grad():
            out = model(probe)
            return [out.float()] + [t.features[p].float() for p in taps]

    for a, b in zip(run(fast, fast_root), run(teacher, teacher), strict=True):
        if a.shape != b.shape or float((a - b).abs().max()) > tol * max(1.0, float(b.abs().max())):
            return False
    return True


def fast_teacher(
    teacher: nn.Module, taps: list[str], probe: Batch, *, fold: bool = True, compile: bool = False, tol: float = 1e-3
) -> tuple[nn.Module, nn.Module, TeacherSpeed]:
    """(module to call, module the taps attach to, what was done) for a frozen, eval-mode ``teacher``.

    Channels-last and ``compile`` are used only when nothing is tapped: tapped features keep the
    layout the student's losses expect, and a compiled graph would not run the taps' hooks."""
    speed = TeacherSpeed()
    if not fold or _has_own_hooks(teacher):
        speed.note = "off" if not fold else "the teacher has hooks of its own: used as it is"
        return teacher, teacher, speed
    try:
        net, speed.folded = fold_batchnorm(teacher, set(taps))
    except Exception as e:  # noqa: BLE001 - torch.fx cannot trace every model: keep the original
        speed.note = f"not traceable by torch.fx ({type(e).__name__}): used as it is"
        return teacher, teacher, speed
    if isinstance(probe, NamedInputs):  # FastTeacher calls its copy with one input tensor
        return teacher, teacher, TeacherSpeed(note="named inputs: used as it is")
    speed.channels_last = not taps and _channels_last_safe(net)
    if not _matches(FastTeacher(net, speed.channels_last, False), net, teacher, taps, probe, tol):
        return teacher, teacher, TeacherSpeed(note="the folded copy did not reproduce the teacher: used as it is")
    speed.compiled = compile and not taps  # compiled on the first training batch (the probe's shape differs)
    return FastTeacher(net, speed.channels_last, speed.compiled), net, speed
