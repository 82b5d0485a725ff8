"""The pruning family's history ops: what a checkpoint replays to rebuild a pruned architecture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from distillprune.core.history import HistoryOp, history_op
from distillprune.errors import DistillpruneError
from distillprune.prune.criteria import traceable
from distillprune.prune.depth import remove_block
from distillprune.prune.heads import HeadCut


@history_op
@dataclass(frozen=True)
class ChannelsOp(HistoryOp):
    """Channels removed by one width-pruning step: ``[module_name, is_out_channels, indices]`` entries
    (Torch-Pruning's pruning history), and the whole attention heads it removed (``prune.heads.HeadCut`` as
    dicts; they touch other dimensions than the entries, so they replay after them)."""

    op = "channels"
    entries: list[list]
    heads: list[dict[str, Any]] = field(default_factory=list)

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        if self.entries:
            replay_channels(model, torch.zeros(1, *input_shape), self.entries)
        for cut in self.heads:
            try:
                HeadCut(**cut).apply(model)
            except (AttributeError, IndexError, KeyError, TypeError, RuntimeError) as e:
                raise DistillpruneError(f"pruning history (heads {cut}) does not fit this model: {e}") from None

    def removed(self) -> dict[str, int]:
        """Output channels removed per layer by this step."""
        out: dict[str, int] = {}
        for name, is_out, idx in self.entries:
            if is_out:
                out[name] = out.get(name, 0) + len(idx)
        for cut in self.heads:
            for name, n in HeadCut(**cut).channels_removed().items():
                out[name] = out.get(name, 0) + n
        return out


def replay_channels(model: nn.Module, example: torch.Tensor, entries: list[list]) -> None:
    """Redo recorded channel removals on ``model`` (same architecture as when they were recorded)."""
    with traceable(model):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    try:
        dg.load_pruning_history([(n, o, list(idx)) for n, o, idx in entries])
    except (AttributeError, IndexError, KeyError) as e:
        raise DistillpruneError(f"pruning history does not fit this model: {e}") from None


@history_op
@dataclass(frozen=True)
class RemoveBlockOp(HistoryOp):
    """A residual block replaced by the identity."""

    op = "remove_block"
    path: str

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        remove_block(model, self.path)


@history_op
@dataclass(frozen=True)
class SparsityOp(HistoryOp):
    """Unstructured sparsity made permanent (zeros live in the weights: nothing to rebuild)."""

    op = "sparsity"
    weights_only = True
    value: float
