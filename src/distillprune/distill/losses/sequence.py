"""Helpers of the sequence (transformer) losses: token-major views of features, masks, layer mapping."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillprune.errors import DistillpruneError


def tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature as (B, T, W): (B, L, H) sequences as they are, (B, C, H, W) maps as H*W tokens of width C,
    (B, D) vectors as one token."""
    x = x.float()
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    if x.dim() == 2:
        return x.unsqueeze(1)
    raise DistillpruneError(f"cannot read a feature of shape {tuple(x.shape)} as tokens")


def token_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(B, T) float weights of real tokens: the attention mask when it fits ``x``'s tokens, else ones."""
    if mask is not None and mask.dim() == 2 and mask.shape == x.shape[:2]:
        return mask.to(x.dtype)
    return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)


def projection(ws: int, wt: int, device: torch.device) -> nn.Module:
    return nn.Identity() if ws == wt else nn.Linear(ws, wt, bias=False).to(device)


def encoder_pairs(student: nn.Module, teacher: nn.Module, which: str) -> list[tuple[str, str]]:
    """(student layer path, teacher layer path) of two Hugging Face encoders: ``all`` maps every student
    layer to the teacher layer it was pruned from (``dp_origin``) or else uniformly (TinyBERT's mapping
    for students with fewer layers); ``last`` pairs the last layers."""
    try:  # an encoder names its layers (transformers.TextEncoder): the distill family imports no other
        (sp, s_layers), (tp, t_layers) = student.encoder_layers(), teacher.encoder_layers()  # type: ignore[operator]
    except (ValueError, DistillpruneError, AttributeError, TypeError):
        raise DistillpruneError("layers: auto needs two Hugging Face encoders (model.source: hf)") from None
    ns, nt = len(s_layers), len(t_layers)
    if which == "last":
        return [(f"{sp}.{ns - 1}", f"{tp}.{nt - 1}")]
    out = []
    for i, layer in enumerate(s_layers):
        origin: Any = getattr(layer, "dp_origin", None)
        j = origin if origin is not None and ns < nt and origin < nt else round((i + 1) * nt / ns) - 1
        out.append((f"{sp}.{i}", f"{tp}.{j}"))
    return out
