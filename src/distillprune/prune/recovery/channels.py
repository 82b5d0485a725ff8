"""Which dense channels a pruned layer kept, read from the weights themselves.

A structural cut only index-selects: a pruned layer's weight is ``W0[out_kept][:, in_kept]`` of the layer it
was cut from, whatever made the cut (a planned width, a uniform Torch-Pruning step, a replayed history op).
Each pruned weight value is looked up among the dense values (sorted, ``searchsorted``); every pruned row
votes for the dense row its values came from, every column for a dense column, and the map is accepted only
if ``W0[out][:, in]`` then reproduces the pruned weight exactly. Trained weights are distinct floats, so the
vote is unanimous; a layer whose values repeat (a constant init) gets no map and is skipped, never guessed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kept_channels(w0: Tensor, w1: Tensor) -> tuple[Tensor, Tensor] | None:
    """(out indices, in indices) with ``w0[out][:, in] == w1``, or None when no such map is found."""
    w0, w1 = w0.detach().cpu(), w1.detach().cpu()
    if w0.dim() != w1.dim() or w0.shape[2:] != w1.shape[2:] or w1.shape[0] > w0.shape[0] or w1.shape[1] > w0.shape[1]:
        return None
    if w0.shape == w1.shape and torch.equal(w0, w1):
        return torch.arange(w0.shape[0]), torch.arange(w0.shape[1])
    flat = w0.flatten()
    values, order = flat.sort()
    q = w1.flatten()
    pos = torch.searchsorted(values, q).clamp_max(len(values) - 1)
    found = values[pos] == q
    src = order[pos]
    per = w0[0, 0].numel()  # elements per (out, in) pair: the kernel
    o_src = (src // (w0.shape[1] * per)).reshape(w1.shape[0], -1)
    i_src = ((src // per) % w0.shape[1]).reshape(w1.shape[0], w1.shape[1], per)
    found = found.reshape(w1.shape[0], -1)
    out = _vote(o_src, found)
    ins = _vote(
        i_src.transpose(0, 1).reshape(w1.shape[1], -1),
        found.reshape(w1.shape[0], w1.shape[1], per).transpose(0, 1).reshape(w1.shape[1], -1),
    )
    if out is None or ins is None:
        return None
    if not torch.equal(w0[out][:, ins], w1):
        return None
    return out, ins


def _vote(src: Tensor, found: Tensor) -> Tensor | None:
    """Per row of ``src``, its most frequent value among the found entries; None if a row has no found value
    or two rows pick the same source."""
    picks = []
    for row, ok in zip(src, found, strict=True):
        vals = row[ok]
        if vals.numel() == 0:
            return None
        picks.append(int(vals.mode().values))
    t = torch.tensor(picks, dtype=torch.long)
    return t if len(set(picks)) == len(picks) else None
