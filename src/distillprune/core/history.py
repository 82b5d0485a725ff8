"""Typed, replayable history of what compression did to an architecture.

A checkpoint stores its base architecture (``ArchSpec``) plus the ops applied to it in order; loading
rebuilds the base and replays them, so a pruned or factorized model comes back from data alone. Each
family defines its ops (a dataclass subclass of :class:`HistoryOp` with a unique ``op`` name and a
``replay``) and registers them with :func:`history_op`; ``core`` knows none of them.

The JSON form is the dataclass's fields plus ``"op"``: ``{"op": "remove_block", "path": "layer1.2"}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from distillprune.core.registry import Registry
from distillprune.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class HistoryOp:
    op: ClassVar[str] = ""
    #: True when replay changes nothing structural (the op lives in the weights: sparsity, clustering)
    weights_only: ClassVar[bool] = False

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Redo this op on ``model`` (the architecture as it was when the op was recorded)."""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **dataclasses.asdict(self)}


#: op name -> class; ops register from the families that cut (the first lookup imports the library)
HISTORY_OPS: Registry[type[HistoryOp]] = Registry("history op", loads_library=True)


def history_op(cls: type[HistoryOp]) -> type[HistoryOp]:
    """Class decorator: register a HistoryOp subclass under its ``op`` name."""
    if not cls.op:
        raise ValueError(f"{cls.__name__} needs a class attribute op = '<name>'")
    HISTORY_OPS.register(cls.op)(cls)
    return cls


def op_from_dict(d: dict[str, Any]) -> HistoryOp:
    if not isinstance(d, dict) or "op" not in d:
        raise CheckpointError(f"bad history entry {d!r}: expected a mapping with an 'op' key")
    kind = d["op"]
    if kind not in HISTORY_OPS:
        raise CheckpointError(f"unknown history op {kind!r}; known: {', '.join(HISTORY_OPS.names())}")
    cls = HISTORY_OPS.get(kind)
    try:
        return cls(**{k: v for k, v in d.items() if k != "op"})
    except TypeError as e:
        raise CheckpointError(f"bad '{kind}' history entry {d!r}: {e}") from None


def replay(model: nn.Module, input_shape: Sequence[int], history: Sequence[HistoryOp]) -> nn.Module:
    for op in history:
        op.replay(model, input_shape)
    return model
