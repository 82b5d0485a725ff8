"""Adapting a pretrained network to new data (transfer learning): a new classifier for the data's classes,
small inputs without a huge classifier, and no classifier at all (an embedding model: a self-supervised
backbone outputs the features its classifier would have read).

torchvision's VGG/AlexNet pool the features to a fixed 7x7 (6x6) grid before their first Linear: at 32x32
the features are 1x1, the pool repeats them 49 times, and the 25088x4096 Linear holds 49 copies' worth of
weights for one input. An adaptive average pool is linear, so ``Linear(pool(x))`` is exactly
``Linear'(x)`` with ``W' = W P`` (``P`` the pool as a matrix): folding it keeps the pretrained function and
drops the copies (VGG-11 at 32x32: 25088x4096 -> 512x4096). Both changes are history ops, so a checkpoint
rebuilds the adapted architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distillprune.core.history import HistoryOp, history_op
from distillprune.core.modules import get_module, set_module
from distillprune.errors import DistillpruneError


def classifier_path(model: nn.Module) -> str | None:
    """The module that produces the logits: timm's ``get_classifier()`` when present, else the last Linear."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, m in model.named_modules():
            if m is head and isinstance(m, nn.Linear):
                return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


@history_op
@dataclass(frozen=True)
class ClassifierOp(HistoryOp):
    """The classifier at ``path`` replaced by a fresh ``Linear(in_features, out_features)``."""

    op = "classifier"
    path: str
    in_features: int
    out_features: int

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        old = get_module(model, self.path)
        bias = getattr(old, "bias", None) is not None
        set_module(model, self.path, nn.Linear(self.in_features, self.out_features, bias=bias))


@history_op
@dataclass(frozen=True)
class EmbeddingOp(HistoryOp):
    """The classifier at ``path`` dropped (an identity in its place): the model outputs the features the
    classifier read -- a backbone's representation -- and says so with ``output_kind = "embedding"``, so it
    is judged by kNN / linear probes and distilled by embedding losses, and pruning keeps its output width."""

    op = "embedding"
    path: str

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        set_module(model, self.path, nn.Identity())
        object.__setattr__(model, "output_kind", "embedding")  # read by core.batch.is_embedder


def drop_classifier(model: nn.Module, where: str = "model") -> EmbeddingOp:
    """Make ``model`` an embedding model in place (its classifier dropped); the op records it."""
    path = classifier_path(model)
    if path is None:
        raise DistillpruneError(
            f"{where}.task embedding: {type(model).__name__} has no Linear classifier to drop (an embedding model "
            "outputs the features its classifier reads); give a model whose forward already returns features"
        )
    op = EmbeddingOp(path)
    op.replay(model, ())
    return op


@history_op
@dataclass(frozen=True)
class FoldPoolOp(HistoryOp):
    """The adaptive average pool at ``pool`` folded into the Linear at ``linear`` for ``hw`` feature maps."""

    op = "fold_pool"
    pool: str
    linear: str
    hw: list[int]

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        fold(model, self.pool, self.linear, self.hw)


@torch.no_grad()
def fold(model: nn.Module, pool_path: str, linear_path: str, hw: Sequence[int]) -> None:
    pool, lin = get_module(model, pool_path), get_module(model, linear_path)
    if not isinstance(lin, nn.Linear):
        raise DistillpruneError(f"fold_pool: '{linear_path}' is a {type(lin).__name__}, expected a Linear")
    h, w = hw
    basis = torch.eye(h * w).view(h * w, 1, h, w)
    pooled = pool(basis).flatten(1)  # [h*w, oh*ow]: the pool as a matrix
    cells = pooled.shape[1]
    channels = lin.in_features // cells
    weight = lin.weight.view(lin.out_features, channels, cells) @ pooled.T  # [out, C, h*w]
    new = nn.Linear(channels * h * w, lin.out_features, bias=lin.bias is not None)
    new.weight.copy_(weight.reshape(lin.out_features, -1))
    if lin.bias is not None:
        new.bias.copy_(lin.bias)
    set_module(model, pool_path, nn.Identity())
    set_module(model, linear_path, new)


@torch.no_grad()
def fold_small_pool(model: nn.Module, input_shape: Sequence[int]) -> FoldPoolOp | None:
    """Fold the first adaptive average pool that enlarges its input into the next Linear, when the result
    computes the same outputs (checked on a random input); None when there is nothing to fold."""
    pools = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        return None
    seen: dict[str, tuple[int, ...]] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, tuple(inputs[0].shape))

        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in pools]
    was = model.training
    model.eval()
    x = torch.randn(2, *input_shape)
    try:
        ref = model(x)
    finally:
        for handle in hooks:
            handle.remove()
    names = [n for n, _ in model.named_modules()]
    for name, pool in pools:
        if name not in seen:
            continue
        _, c, h, w = seen[name]
        oh, ow = torch.nn.modules.utils._pair(pool.output_size)
        if oh is None or ow is None or h * w >= oh * ow:
            continue
        after = names[names.index(name) + 1 :]
        lin = next((n for n in after if isinstance(model.get_submodule(n), nn.Linear)), None)
        if lin is None or model.get_submodule(lin).in_features != c * oh * ow:
            continue
        backup = (copy.deepcopy(pool), copy.deepcopy(model.get_submodule(lin)))
        fold(model, name, lin, (h, w))
        if torch.allclose(model(x), ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max()))):
            model.train(was)
            return FoldPoolOp(name, lin, [h, w])
        set_module(model, name, backup[0])  # not the pattern we know (e.g. the pool's output is reused)
        set_module(model, lin, backup[1])
    model.train(was)
    return None
