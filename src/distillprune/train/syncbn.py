"""BatchNorm with statistics over the global batch of all ranks (``runtime.sync_bn``), on any backend.

torch's ``nn.SyncBatchNorm`` runs on GPUs only; this one is the same algorithm in plain tensor ops, so it
also runs under gloo on the CPU (where the tests check it against a single process). Forward: one
all-reduce of the per-channel sums of x and x^2 and the count gives the global mean and variance.
Backward: with per-rank losses that DDP averages, each rank's incoming gradient is W times the global
loss's, so the global input gradient needs the global sums of dy and dy*x_hat (one all-reduce):

    dx = invstd * w * (dy - mean(dy) - x_hat * mean(dy * x_hat))      means over the global batch

while the weight and bias gradients stay local sums (DDP averages them like any other parameter).

While training, ``swap_batchnorms`` puts a :class:`SyncBatchNorm` in place of each BatchNorm, sharing its
parameters and buffers (same names: checkpoints written meanwhile are unchanged); ``restore_batchnorms``
puts the originals back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from distillprune.core.modules import set_module


def _dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, count):  # type: ignore[no-untyped-def]
        xhat = (x.float() - _per_channel(mean, x)) * _per_channel(invstd, x)
        y = xhat
        if weight is not None:
            y = y * _per_channel(weight.float(), x) + _per_channel(bias.float(), x)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count = count
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        xhat, invstd, weight = ctx.saved_tensors
        g = dy.float()
        dims = _dims(g)
        local = torch.cat([g.sum(dims), (g * xhat).sum(dims)])
        sums = local.clone()
        dist.all_reduce(sums)
        c = xhat.shape[1]
        mean_dy, mean_dy_xhat = sums[:c] / ctx.count, sums[c:] / ctx.count
        scale = invstd if weight is None else invstd * weight.float()
        dx = (g - _per_channel(mean_dy, g) - xhat * _per_channel(mean_dy_xhat, g)) * _per_channel(scale, g)
        dw = local[c:].to(weight.dtype) if weight is not None else None
        db = local[:c].to(weight.dtype) if weight is not None else None
        return dx.to(dy.dtype), dw, db, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm whose training-mode statistics cover every rank's share of the batch."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input (N, C, ...), got {x.dim()}-d")

    @classmethod
    def sharing(cls, bn: nn.modules.batchnorm._BatchNorm) -> SyncBatchNorm:
        """A SyncBatchNorm holding ``bn``'s very parameters and buffers."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new._buffers[name] = bn._buffers.get(name)
        new.train(bn.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        # only training synchronises: evaluation (possibly on rank 0 alone) must never wait for the others
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        mean, var, count = self._global_stats(x)
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running(mean, var, count)
        invstd = (var + self.eps).rsqrt()
        return _SyncBN.apply(x, self.weight, self.bias, mean, invstd, count)

    @torch.no_grad()
    def _global_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        xf = x.float()
        dims = _dims(xf)
        n = torch.tensor([xf.numel() // xf.shape[1]], dtype=torch.float64, device=x.device)
        sums = torch.cat([xf.sum(dims, dtype=torch.float64), (xf * xf).sum(dims, dtype=torch.float64), n])
        dist.all_reduce(sums)
        c = xf.shape[1]
        count = float(sums[-1])
        mean = sums[:c] / count
        var = (sums[c : 2 * c] / count - mean * mean).clamp_min(0)
        return mean.float(), var.float(), count

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        assert self.running_mean is not None and self.running_var is not None
        tracked = self.num_batches_tracked
        if tracked is not None:
            tracked.add_(1)
        if self.momentum is not None:
            factor = self.momentum
        else:  # cumulative moving average, as nn.BatchNorm
            assert tracked is not None
            factor = 1.0 / float(tracked)
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def swap_batchnorms(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace each BatchNorm under ``root`` by a SyncBatchNorm sharing its tensors; returns what
    :func:`restore_batchnorms` needs to put them back."""
    swapped = []
    for name, m in list(root.named_modules()):
        if name and type(m) in BATCHNORMS:
            swapped.append((root, name, set_module(root, name, SyncBatchNorm.sharing(m))))
    return swapped


def restore_batchnorms(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for root, name, bn in reversed(swapped):
        sync = set_module(root, name, bn)
        bn.train(sync.training)
        for key, t in sync.state_dict().items():  # shared tensors: a no-op, unless something replaced them
            target = bn.state_dict()[key]
            if target.data_ptr() != t.data_ptr():
                target.copy_(t)
