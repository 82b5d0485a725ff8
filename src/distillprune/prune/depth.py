"""Depth pruning: remove whole residual blocks.

At equal MACs a shallower network is far faster (fewer kernel launches / operator calls), so
depth is a pruning dimension of its own. A block is removable when its shortcut is the identity
(same shape in and out); removing it leaves ``x + f(x)`` as ``x``. Blocks are chosen greedily by
the smallest increase of the distillation loss (KL to the teacher) when skipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.core.modules import set_module
from distillprune.distill.losses.kd import soft_kl
from distillprune.errors import DistillpruneError


def removable_blocks(model: nn.Module) -> list[str]:
    """Paths of residual blocks with an identity shortcut (ours, or torchvision-style ``downsample=None``)."""
    out = []
    for name, m in model.named_modules():
        if getattr(m, "removable", False) is True:
            out.append(name)
        elif type(m).__name__ in ("BasicBlock", "Bottleneck") and hasattr(m, "downsample") and m.downsample is None:
            out.append(name)
    return out


def remove_block(model: nn.Module, path: str) -> nn.Module:
    """Replace the block at ``path`` by the identity; returns the block."""
    try:
        model.get_submodule(path)  # a path that is not there must not silently add a module
    except AttributeError:
        raise DistillpruneError(f"no block '{path}' in {type(model).__name__} to remove") from None
    return set_module(model, path, nn.Identity())


@torch.no_grad()
def _kd_loss(model: nn.Module, teacher_logits: Sequence[torch.Tensor], batches: Sequence[Batch]) -> float:
    return sum(float(soft_kl(call(model, x), t, 1.0)) for x, t in zip(batches, teacher_logits, strict=True)) / len(batches)


@torch.no_grad()
def choose_blocks(model: nn.Module, teacher: nn.Module, batches: Sequence[Batch], count: int) -> list[str]:
    """Greedily pick ``count`` blocks whose removal raises the KD loss least; removes them from ``model``."""
    candidates = removable_blocks(model)
    if count > len(candidates):
        raise DistillpruneError(f"depth.blocks={count} but the model has only {len(candidates)} removable "
                                f"residual blocks ({', '.join(candidates) or 'none'})")
    was = model.training
    model.eval()
    teacher_logits = [call(teacher, x) for x in batches]
    chosen = []
    for _ in range(count):
        scores = {}
        for path in candidates:
            block = model.get_submodule(path)
            remove_block(model, path)
            scores[path] = _kd_loss(model, teacher_logits, batches)
            set_module(model, path, block)
        best = min(scores, key=scores.__getitem__)
        remove_block(model, best)
        candidates.remove(best)
        chosen.append(best)
    model.train(was)
    return chosen
