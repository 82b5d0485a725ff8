"""Compensation without data (FLAP-style bias compensation): a removed input channel's *mean* contribution is
folded into its consumer's bias, so the consumer's output keeps its expected value.

The mean of a removed channel comes from its producer's BatchNorm alone: in eval mode a BN output is
``y = gamma (z - mu) / sigma + beta``; with ``z ~ N(mu, sigma^2)`` (the running statistics), ``y ~ N(beta,
gamma^2)`` and, for a consumer reading ``relu(y)``, ``E[relu(y)] = beta Phi(beta/|gamma|) + |gamma|
phi(beta/|gamma|)`` (the mean of a rectified Gaussian). The consumer's lost output is then
``c_o = sum_j sum_kernel W[o, j] E[x_j]`` over the removed channels ``j`` (zero padding at the borders is
ignored). It goes into the consumer's bias, or, for a bias-free conv followed by a BatchNorm, into that BN's
running mean (``bn(z + c)`` is ``bn`` with ``running_mean - c``). A consumer whose input is not ``bn`` or
``relu(bn)`` (e.g. a residual sum) has no data-free mean and is skipped. BatchNorm re-estimation on data does
the same shift for a consumer followed by a BN, so this matters when there is no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from distillprune.prune.recovery.channels import kept_channels
from distillprune.prune.recovery.report import LayerRecovery

BN = nn.modules.batchnorm._BatchNorm
LAYERS = (nn.Conv2d, nn.Linear)


def relu_gaussian_mean(mean: Tensor, std: Tensor) -> Tensor:
    """``E[relu(y)]`` for ``y ~ N(mean, std^2)`` (elementwise; ``std`` 0 gives ``relu(mean)``)."""
    s = std.abs().clamp_min(1e-12)
    a = mean / s
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    return mean * cdf + s * pdf


@dataclass
class _Pass:
    """One forward of ``model``, recorded: each layer's input, each BN's input and output."""

    model: nn.Module
    layer_in: dict[str, Tensor] = field(default_factory=dict)
    bn_in: dict[str, Tensor] = field(default_factory=dict)
    bn_out: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def _io(model: nn.Module, x: Tensor) -> _Pass:
    """One forward of ``model`` on ``x``, recorded."""
    rec = _Pass(model)
    hs = []

    def on_layer(mod: nn.Module, a: tuple, n: str) -> None:  # hooks return None: the forward is unchanged
        rec.layer_in.setdefault(n, a[0])

    def on_bn(mod: nn.Module, a: tuple, o: Tensor, n: str) -> None:
        rec.bn_in.setdefault(n, a[0])
        rec.bn_out.setdefault(n, o)

    for n, m in model.named_modules():
        if isinstance(m, LAYERS):
            hs.append(m.register_forward_pre_hook(lambda mod, a, n=n: on_layer(mod, a, n)))
        elif isinstance(m, BN):
            hs.append(m.register_forward_hook(lambda mod, a, o, n=n: on_bn(mod, a, o, n)))
    try:
        model.eval()(x)
    finally:
        for h in hs:
            h.remove()
    return rec


def _input_mean(inp: Tensor, bn_out: dict[str, Tensor], model: nn.Module) -> Tensor | None:
    """The data-free mean of each channel of ``inp`` when it is ``bn(.)`` or ``relu(bn(.))`` of a BN."""
    for n, o in bn_out.items():
        if o.shape != inp.shape:
            continue
        bn = model.get_submodule(n)
        assert isinstance(bn, BN)
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)
        if torch.equal(o, inp):
            return beta
        if torch.equal(o.clamp_min(0), inp):
            return relu_gaussian_mean(beta, gamma)
    return None


def compensate(pruned: nn.Module, dense: nn.Module, x: Tensor) -> list[LayerRecovery]:
    """Fold the removed input channels' mean contributions into each consumer (see the module docstring)."""
    d, q = _io(dense, x), _io(pruned, x)
    out = []
    for p, m in pruned.named_modules():
        if not isinstance(m, LAYERS) or p not in d.layer_in:
            continue
        m0 = dense.get_submodule(p)
        if not isinstance(m0, type(m)) or m.weight.shape[1] >= m0.weight.shape[1]:
            continue
        out.append(_one(p, m, m0, d, q))
    return out


def _one(p: str, m: nn.Conv2d | nn.Linear, m0: nn.Conv2d | nn.Linear, d: _Pass, q: _Pass) -> LayerRecovery:
    """Compensate layer ``p`` (``m`` pruned, ``m0`` dense), from the dense pass ``d`` and the pruned pass ``q``."""
    rec = LayerRecovery(p)
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        rec.skipped = f"grouped/depthwise convolution (groups={m.groups})"
        return rec
    found = kept_channels(m0.weight, m.weight)
    mean = _input_mean(d.layer_in[p], d.bn_out, d.model)
    if found is None or mean is None:
        rec.skipped = "no channel map" if found is None else "input is not bn or relu(bn): no data-free mean"
        return rec
    outs, ins = found
    removed = torch.ones(m0.weight.shape[1], dtype=torch.bool)
    removed[ins] = False
    w = m0.weight.detach()[outs][:, removed]
    c = (w.flatten(2).sum(2) if w.dim() > 2 else w) @ mean[removed].to(w)
    if m.bias is not None:
        m.bias.add_(c)
    else:
        bn = _bn_after(m, p, q)
        if bn is None:
            rec.skipped = "no bias and no BatchNorm right after it to take the compensation"
            return rec
        bn.running_mean.sub_(c.to(bn.running_mean))
    rec.accepted = True
    return rec


@torch.no_grad()
def _bn_after(m: nn.Module, p: str, q: _Pass):  # noqa: ANN202
    """The BN (tracking running statistics) whose input is layer ``m``'s output in the pass ``q``, or None."""
    y = m(q.layer_in[p])
    for n, t in q.bn_in.items():
        bn = q.model.get_submodule(n)
        if t.shape == y.shape and bn.track_running_stats and torch.allclose(t, y, atol=1e-6, rtol=1e-5):
            return bn
    return None
