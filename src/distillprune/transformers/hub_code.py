"""Per-layer sizes of a pruned Hugging Face encoder, in code that needs only torch and transformers.

A pruned encoder keeps its head size but may keep a different number of heads and FFN neurons in each
layer; a Hugging Face config has one ``num_attention_heads`` and one ``intermediate_size`` (and derives the
head size from them), and transformers 5 dropped ``pruned_heads``. So the per-layer sizes travel in the
config as ``distillprune_layout = {"head_dim": d, "heads": [...], "intermediate": [...]}`` and this file is
written next to the weights by ``save_pretrained`` (with ``auto_map``): ``AutoModel.from_pretrained(folder,
trust_remote_code=True)`` builds the stock model, then :func:`shrink_to_layout` resizes its layers before the
weights are loaded. distillprune uses the same function to rebuild pruned models.

This module must stay self-contained (it is copied into saved model folders): no distillprune imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: per architecture family: attention projections (q, k, v, out) and FFN (in, out), relative to a layer
PARTS = {
    "bert": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    "distilbert": (
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
    ),
}


def layer_family(layer: nn.Module) -> str:
    for fam, parts in PARTS.items():
        try:
            layer.get_submodule(parts[0])
            layer.get_submodule(parts[4])
        except AttributeError:
            continue
        return fam
    raise ValueError(f"{type(layer).__name__}: not a BERT- or DistilBERT-style encoder layer")


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of encoder layers (``encoder.layer`` / ``transformer.layer``) and its path."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and (name.endswith("encoder.layer") or name.endswith("transformer.layer")):
            return name, m
    raise ValueError(f"{type(model).__name__}: found no encoder.layer / transformer.layer list")


def part(layer: nn.Module, i: int) -> nn.Linear:
    return linear_at(layer, PARTS[layer_family(layer)][i])


def linear_at(layer: nn.Module, path: str) -> nn.Linear:
    m = layer.get_submodule(path)
    if not isinstance(m, nn.Linear):
        raise ValueError(f"{type(layer).__name__}.{path}: a {type(m).__name__}, expected a Linear projection")
    return m


def _set(layer: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, leaf, new)


def sliced_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear keeping output rows (``dim=0``) or input columns (``dim=1``) ``keep`` of ``lin``."""
    keep = keep.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, keep).clone()
    b = (
        None
        if lin.bias is None
        else (lin.bias.detach().index_select(0, keep).clone() if dim == 0 else lin.bias.detach().clone())
    )
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    if new.bias is not None and lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


def keep_heads(layer: nn.Module, heads: list[int], head_dim: int) -> None:
    """Keep attention heads ``heads`` (current numbering) of ``layer``."""
    paths = PARTS[layer_family(layer)]
    rows = torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)
    for p in paths[:3]:
        _set(layer, p, sliced_linear(linear_at(layer, p), rows, 0))
    _set(layer, paths[3], sliced_linear(linear_at(layer, paths[3]), rows, 1))
    attn = layer.get_submodule(paths[0].rpartition(".")[0])
    for name, value in (
        ("num_attention_heads", len(heads)),
        ("n_heads", len(heads)),
        ("all_head_size", len(heads) * head_dim),
    ):
        if hasattr(attn, name):  # bookkeeping only: the forward infers the head count from the shapes
            setattr(attn, name, value)


def keep_neurons(layer: nn.Module, neurons: list[int]) -> None:
    """Keep FFN intermediate neurons ``neurons`` of ``layer``."""
    paths = PARTS[layer_family(layer)]
    idx = torch.tensor(neurons, dtype=torch.long)
    _set(layer, paths[4], sliced_linear(linear_at(layer, paths[4]), idx, 0))
    _set(layer, paths[5], sliced_linear(linear_at(layer, paths[5]), idx, 1))


def config_head_dim(config: PretrainedConfig) -> int:
    hidden = getattr(config, "hidden_size", None) or config.dim
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    return int(hidden // heads)


def layout_of(model: nn.Module, head_dim: int) -> dict[str, Any]:
    """The per-layer sizes of ``model`` as they are now."""
    _, layers = encoder_layers(model)
    return {
        "head_dim": head_dim,
        "heads": [part(m, 0).out_features // head_dim for m in layers],
        "intermediate": [part(m, 4).out_features for m in layers],
    }


def shrink_to_layout(model: nn.Module, layout: dict[str, Any] | None) -> nn.Module:
    """Resize each layer of a freshly built model to ``layout`` (the first heads / neurons are kept: the
    weights are loaded afterwards)."""
    if not layout:
        return model
    _, layers = encoder_layers(model)
    if len(layout["heads"]) != len(layers) or len(layout["intermediate"]) != len(layers):
        raise ValueError(f"distillprune_layout has {len(layout['heads'])} layers, the model {len(layers)}")
    d = int(layout["head_dim"])
    for m, h, f in zip(layers, layout["heads"], layout["intermediate"], strict=True):
        if part(m, 0).out_features != h * d:
            keep_heads(m, list(range(h)), d)
        if part(m, 4).out_features != f:
            keep_neurons(m, list(range(f)))
    return model


def pruned_class(base: type) -> type:
    """``base`` (e.g. ``transformers.BertModel``) whose layers take the sizes of ``config.distillprune_layout``
    right after construction, so ``from_pretrained`` loads a pruned folder's weights into matching shapes."""

    def __init__(self, config, *args, **kwargs):  # type: ignore[no-untyped-def]
        base.__init__(self, config, *args, **kwargs)
        shrink_to_layout(self, getattr(config, "distillprune_layout", None))

    name = f"Distillprune{base.__name__}"
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})
