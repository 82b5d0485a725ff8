"""Which residual blocks to remove: the ones the rest of the network recovers from best, per millisecond saved
(PRACTISE: Wang et al., 2023, "Practical Network Acceleration with Tiny Sets", CVPR).

The KD loss of a cut *before* recovery (``prune.depth.BlockScorer``) says how much a block matters as it is;
what a pruned and recovered network keeps is how much of it cannot be *replaced*. A block ``y = B(x)`` whose
output is close to an affine 1x1 map of its input loses little once the layers around it are re-fitted
(``prune.recovery``'s least squares absorb a linear change; the stream target re-fits the next block's output).
So each removable block is scored by

    e_b = min_{A, c} || A x + c - y ||^2 / || y - mean(y) ||^2     (the relative error of that map, least squares)

over calibration inputs (conv maps: a seeded sample of positions per image; token sequences: every token),
computed on the dense model in one forward pass, and ranked by ``e_b / saved_b``: the error per millisecond the
block's removal saves (read from the planner's latency table, or its MACs for a MACs target). PRACTISE fits
its adaptor by gradient descent on a tiny set; here it is the closed form of the recovery engine's own solver
(``prune.recovery.solve``), so scoring all of ResNet-56's blocks costs one forward pass.

Blocks whose input and output differ in shape (none of the removable ones do) are scored infinite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from distillprune.core.batch import call
from distillprune.prune.recovery.solve import Gram


@torch.no_grad()
def block_errors(
    model: nn.Module, blocks: Sequence[str], batches: Sequence[torch.Tensor], positions: int = 64, seed: int = 0
) -> dict[str, float]:
    """``e_b`` (see the module docstring) of every block in ``blocks`` on the calibration ``batches``."""
    grams: dict[str, Gram] = {}
    sums: dict[str, list] = {}
    gen = torch.Generator().manual_seed(seed)

    def hook(path: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is None or not isinstance(output, torch.Tensor) or output.shape != x.shape or x.dim() < 2:
                grams.pop(path, None)
                sums[path] = [None]  # not a shape-preserving block: not scored
                return
            if sums.get(path) == [None]:
                return
            xr, yr = _pair_rows(x, output, gen, positions)
            g = grams.setdefault(path, Gram(xr.shape[1], yr.shape[1], bias=True, products=torch.float32))
            g.add(xr, yr)
            acc = sums.setdefault(path, [0.0, 0])
            acc[0] = acc[0] + yr.double().sum(0)
            acc[1] += len(yr)

        return fn

    handles = [model.get_submodule(b).register_forward_hook(hook(b)) for b in blocks]
    was = model.training
    model.eval()
    try:
        for x in batches:
            call(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for b in blocks:
        g, acc = grams.get(b), sums.get(b)
        if g is None or acc is None or acc == [None] or g.rows < 2:
            out[b] = float("inf")
            continue
        w = g.solve(1e-6)
        mean = acc[0] / acc[1]
        total = float(g.yty) / g.rows - float((mean * mean).sum())
        out[b] = g.residual(w) / max(total, 1e-12)
    return out


def _pair_rows(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, channels) of a block's input and output at the same places: a conv map's seeded sample of
    ``positions`` per image, a sequence's tokens, a vector as it is."""
    x, y = x.detach().float(), y.detach().float()
    if x.dim() == 2:
        return x, y
    if x.dim() == 3:  # (batch, tokens, channels)
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    fx_, fy = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)  # (batch, positions, channels)
    n, k = fx_.shape[1], min(positions, fx_.shape[1])
    idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(fx_.shape[0])]).to(x.device)
    idx = idx.unsqueeze(-1).expand(-1, -1, fx_.shape[2])
    return torch.gather(fx_, 1, idx).reshape(-1, fx_.shape[2]), torch.gather(fy, 1, idx).reshape(-1, fy.shape[2])


def by_recoverability(errors: Mapping[str, float], saved: Mapping[str, float]) -> list[str]:
    """The blocks ordered by error per unit saved (smallest first: the first to remove)."""
    return sorted(errors, key=lambda b: (errors[b] / max(saved.get(b, 0.0), 1e-12), b))
