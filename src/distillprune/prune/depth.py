"""Depth pruning: remove whole residual blocks.

At equal MACs a shallower network is far faster (fewer kernel launches / operator calls), so
depth is a pruning dimension of its own. Residual blocks ``y = x + f(x)`` are found in the model's graph
(``prune.residual``, torch.fx), whatever their class; removing one leaves ``x + f(x)`` as ``x``. Blocks are
chosen greedily by the smallest increase of the distillation loss (KL to the teacher) when skipped
(``prune.blocks.choose_blocks``, beside the scorer it uses).
"""

from __future__ import annotations

from torch import nn

from distillprune.core.modules import set_module
from distillprune.errors import DistillpruneError
from distillprune.prune.residual import ZeroBranch, find_residuals, residual_at


def removable_blocks(model: nn.Module) -> list[str]:
    """Paths of the residual blocks ``y = x + f(x)`` found in the model's graph (see ``prune.residual``):
    modules that are a residual, and residual branches in a parent's forward (named by their largest child)."""
    return [r.path for r in find_residuals(model)[0]]


def why_none(model: nn.Module) -> str:
    """Why a model has no removable block, for messages."""
    _, notes = find_residuals(model)
    why = (
        "no identity residual y = x + f(x) found in the graph (a shortcut that changes shape, e.g. a strided "
        "or 1x1-conv shortcut, is not one)"
    )
    return why + (f"; {len(notes)} module(s) could not be traced: {'; '.join(notes[:2])}" if notes else "")


def remove_block(model: nn.Module, path: str) -> nn.Module:
    """Remove the residual block or branch at ``path`` (``x + f(x)`` becomes ``x``); returns the module that was
    at ``path``. A block is replaced by the identity; a branch in a parent's forward outputs zeros."""
    try:
        old = model.get_submodule(path)  # a path that is not there must not silently add a module
    except AttributeError:
        raise DistillpruneError(f"no block '{path}' in {type(model).__name__} to remove") from None
    res = residual_at(model, path)
    if res is None:
        raise DistillpruneError(
            f"'{path}' in {type(model).__name__} is not a residual block y = x + f(x); "
            f"removable: {', '.join(removable_blocks(model)) or 'none'}"
        )
    if res.kind == "module":
        set_module(model, path, nn.Identity())
        return old
    for i, p in enumerate(res.chain):
        set_module(model, p, ZeroBranch() if i == 0 else nn.Identity())
    return old


def _affected(model: nn.Module, path: str) -> dict[str, nn.Module]:
    """The modules ``remove_block(model, path)`` replaces, to put them back."""
    res = residual_at(model, path)
    paths = res.chain if res is not None and res.kind == "branch" else [path]
    return {p: model.get_submodule(p) for p in paths}
