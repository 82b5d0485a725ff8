"""BatchNorm while a trained model is fine-tuned.

A pruned and recovered student is a function of its *eval-mode* BatchNorms: recovery (``prune.recovery``) fits
the convolutions so that ``BN_eval(conv(x))`` matches the dense network, with the running statistics left as
they were. The batches the student now sees have other statistics, so the moment training switches to
train-mode normalisation (batch statistics) the network computes a different function -- and the first
epoch of a fine-tune spends itself undoing that, not improving on the start.

:func:`renormalize` removes the mismatch without changing the function: each BatchNorm's running mean and
variance are replaced by the statistics of its inputs on training batches, and the change is folded into its
scale and shift,

    gamma' = gamma * s' / s,   beta' = beta + gamma * (mu' - mu) / s,    s = sqrt(var + eps)

so ``gamma' (x - mu') / s' + beta' == gamma (x - mu) / s + beta`` for every x (eval mode is unchanged), while
train mode, which normalises by statistics close to ``mu'`` and ``s'``, now starts from the same function.
(Plain re-estimation -- ``prune.estimate.recalibrate_bn`` -- changes the function: it costs a recovered
ResNet-56 over a point of top-1.) :func:`frozen` keeps the statistics fixed instead, for a share of a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distillprune.core.batch import Batch, call

_BN = nn.modules.batchnorm._BatchNorm


def norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def renormalize(model: nn.Module, batches: Iterable[Batch]) -> int:
    """Function-preserving re-normalisation (see the module docstring) on ``batches`` (normalised inputs, as
    the model's forward takes them); returns the number of BatchNorms changed. Needs affine BatchNorms: one
    without a scale and shift cannot absorb the change and is left as it is."""
    bns = [m for m in norms(model) if m.affine and m.running_mean is not None and m.running_var is not None]
    if not bns:
        return 0
    sums: dict[nn.Module, list] = {bn: [0, 0.0, 0.0] for bn in bns}

    def hook(bn: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums[bn]
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    was = model.training
    model.eval()  # eval mode: the inputs every BatchNorm sees are those of the function we preserve
    try:
        for x in batches:
            call(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    changed = 0
    for bn in bns:
        n, s1, s2 = sums[bn]
        if n < 2:
            continue
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0) * n / (n - 1)  # unbiased, as BatchNorm's running_var
        _fold(bn, mean, var)
        changed += 1
    return changed


def _fold(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Give ``bn`` the running statistics ``mean``/``var`` and the scale and shift that keep its eval output."""
    assert bn.running_mean is not None and bn.running_var is not None and bn.weight is not None
    dtype = bn.running_mean.dtype
    mu, s = bn.running_mean.double(), (bn.running_var.double() + bn.eps).sqrt()
    s_new = (var + bn.eps).sqrt()
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    bn.weight.copy_((gamma * s_new / s).to(bn.weight.dtype))
    bn.bias.copy_((beta + gamma * (mean - mu) / s).to(bn.bias.dtype))
    bn.running_mean.copy_(mean.to(dtype))
    bn.running_var.copy_(var.to(dtype))


def set_statistics_frozen(model: nn.Module, frozen: bool) -> None:
    """BatchNorms in eval mode (running statistics used and kept) while the rest of ``model`` trains, or back
    to the model's own mode."""
    for bn in norms(model):
        bn.train(not frozen and model.training)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm statistics frozen for the block (see :func:`set_statistics_frozen`)."""
    set_statistics_frozen(model, True)
    try:
        yield
    finally:
        set_statistics_frozen(model, False)
