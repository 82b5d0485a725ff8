"""Structural pruning of an encoder: keep some attention heads or FFN neurons of a layer, drop whole layers.

Each change is a typed history op (``prune_heads``, ``prune_ffn``, ``drop_layers``), so a distillprune
checkpoint rebuilds the pruned model by replay; after each change the HF config is brought up to date
(``num_hidden_layers``, and ``distillprune_layout`` with the per-layer head and neuron counts, see
``hub_code``), so ``save_pretrained`` writes a folder that ``from_pretrained`` reloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from distillprune.core.history import HistoryOp, history_op
from distillprune.errors import DistillpruneError
from distillprune.transformers.hub_code import (
    config_head_dim,
    encoder_layers,
    keep_heads,
    keep_neurons,
    layout_of,
    part,
)


def hf_of(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside a TextEncoder (or the model itself)."""
    return cast("PreTrainedModel", getattr(model, "hf", model))  # a TextEncoder's, or a Hugging Face model


def layers(model: nn.Module) -> nn.ModuleList:
    try:
        return encoder_layers(hf_of(model))[1]
    except ValueError as e:
        raise DistillpruneError(str(e)) from None


def layers_path(model: nn.Module) -> str:
    """The module path of the layer list inside ``model`` (for feature taps)."""
    prefix = "hf." if hasattr(model, "hf") else ""
    return prefix + encoder_layers(hf_of(model))[0]


def head_dim(model: nn.Module) -> int:
    return config_head_dim(hf_of(model).config)


def heads(model: nn.Module) -> list[int]:
    d = head_dim(model)
    return [part(m, 0).out_features // d for m in layers(model)]


def neurons(model: nn.Module) -> list[int]:
    return [part(m, 4).out_features for m in layers(model)]


def sync_config(model: nn.Module) -> None:
    """Make the HF config describe the model as it now is."""
    hf = hf_of(model)
    cfg = hf.config
    n = len(layers(model))
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(cfg, key):
            setattr(cfg, key, n)
    layout = layout_of(hf, head_dim(model))
    full_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    full_ffn = getattr(cfg, "intermediate_size", None) or cfg.hidden_dim
    stock = all(h == full_heads for h in layout["heads"]) and all(f == full_ffn for f in layout["intermediate"])
    if stock:
        if hasattr(cfg, "distillprune_layout"):
            delattr(cfg, "distillprune_layout")
    else:
        cfg.distillprune_layout = layout


def _layer(model: nn.Module, index: int) -> nn.Module:
    ls = layers(model)
    if not 0 <= index < len(ls):
        raise DistillpruneError(f"layer {index} out of range: the encoder has {len(ls)} layers")
    return ls[index]


def _check_keep(keep: Sequence[int], total: int, what: str) -> list[int]:
    keep = sorted(int(i) for i in keep)
    if not keep:
        raise DistillpruneError(f"cannot remove every {what} of a layer (drop the layer instead)")
    if keep[0] < 0 or keep[-1] >= total or len(set(keep)) != len(keep):
        raise DistillpruneError(f"{what} indices {keep} do not fit a layer with {total}")
    return keep


def apply_heads(model: nn.Module, layer: int, keep: Sequence[int]) -> None:
    m = _layer(model, layer)
    d = head_dim(model)
    keep_heads(m, _check_keep(keep, part(m, 0).out_features // d, "attention head"), d)
    sync_config(model)


def apply_neurons(model: nn.Module, layer: int, keep: Sequence[int]) -> None:
    m = _layer(model, layer)
    keep_neurons(m, _check_keep(keep, part(m, 4).out_features, "FFN neuron"))
    sync_config(model)


def drop_layers(model: nn.Module, indices: Sequence[int]) -> None:
    ls = layers(model)
    gone = set(int(i) for i in indices)
    if not gone or min(gone) < 0 or max(gone) >= len(ls):
        raise DistillpruneError(f"layers {sorted(gone)} do not fit an encoder with {len(ls)} layers")
    if len(gone) >= len(ls):
        raise DistillpruneError(f"cannot drop all {len(ls)} layers of the encoder")
    for i, m in enumerate(ls):  # where each layer sat in the unpruned model (layer mapping in KD)
        if getattr(m, "dp_origin", None) is None:
            m.dp_origin = i  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors/modules only
    for i in sorted(gone, reverse=True):
        del ls[i]
    sync_config(model)


@history_op
@dataclass(frozen=True)
class HeadsOp(HistoryOp):
    """Attention heads kept in one layer (indices in the layer's heads at the time)."""

    op = "prune_heads"
    layer: int
    keep: list[int]

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        apply_heads(model, self.layer, self.keep)


@history_op
@dataclass(frozen=True)
class NeuronsOp(HistoryOp):
    """FFN intermediate neurons kept in one layer."""

    op = "prune_ffn"
    layer: int
    keep: list[int]

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        apply_neurons(model, self.layer, self.keep)


@history_op
@dataclass(frozen=True)
class DropLayersOp(HistoryOp):
    """Whole encoder layers removed (indices at the time)."""

    op = "drop_layers"
    layers: list[int]

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        drop_layers(model, self.layers)


@dataclass
class LayerCut:
    """The heads (``part="heads"``) or FFN neurons (``part="ffn"``) one encoder layer keeps, as the one cutter
    (``prune.cut.Cutter``) applies, checks and rolls back a cut: the model must compute what it computed with
    the removed heads' value rows (the removed neurons' input rows) set to zero."""

    index: int
    part: str
    keep: list[int]
    total: int  # heads or neurons before the cut
    head_dim: int
    path: str  # the layer's module path (named when the cut is left whole)

    @property
    def layer(self) -> str:
        return self.path

    @property
    def noun(self) -> str:
        return "heads" if self.part == "heads" else "FFN neurons"

    def removed(self) -> list[int]:
        kept = set(self.keep)
        return [i for i in range(self.total) if i not in kept]

    def what(self) -> str:
        return f"{self.noun} {self.removed()} of the {self.total} of encoder layer {self.index}"

    def touched(self, model: nn.Module) -> list[nn.Module]:
        return list(_layer(model, self.index).modules())

    def silenced(self, model: nn.Module) -> list[tuple[torch.Tensor, list[int]]]:
        layer, d = _layer(model, self.index), self.head_dim
        if self.part == "heads":
            lin, rows = part(layer, 2), [h * d + j for h in self.removed() for j in range(d)]
        else:
            lin, rows = part(layer, 4), self.removed()
        return [(t, rows) for t in (lin.weight, lin.bias) if t is not None]

    def apply(self, model: nn.Module) -> None:
        (apply_heads if self.part == "heads" else apply_neurons)(model, self.index, self.keep)

    def op(self) -> HistoryOp:
        return (HeadsOp if self.part == "heads" else NeuronsOp)(self.index, self.keep)


def summary(model: nn.Module) -> dict[str, Any]:
    """Layers, heads and FFN neurons per layer."""
    return {"layers": len(layers(model)), "heads": heads(model), "ffn": neurons(model)}
