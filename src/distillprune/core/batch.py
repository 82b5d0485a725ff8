"""Model inputs: one tensor (images, features) or several named tensors sharing the batch dimension
(token ids, attention mask, token types of a text model).

``NamedInputs`` is what a text split holds and what its loader yields: int64 tensors padded to the split's
longest sequence; indexing rows (a batch) trims the padding columns that no row of the batch uses, so every
batch is padded to its own longest sequence (dynamic padding). Everything that runs a model on a batch calls
:func:`call`, so an image model keeps getting ``model(x)`` and a text model gets ``model(**inputs)``.

A model with named inputs declares them: ``input_names`` (the order of its forward's arguments, also the
ONNX input names) and ``example_inputs(batch, seq)``; :func:`example_inputs` falls back to
``torch.zeros(batch, *input_shape)`` for everything else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

MASK = "attention_mask"


class NamedInputs:
    """Named tensors with a common first (batch) dimension; ``len`` is the batch size."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise ValueError("NamedInputs needs at least one tensor")
        self.tensors = dict(tensors)
        sizes = {k: len(v) for k, v in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"named inputs differ in batch size: {sizes}")

    # -- the batch dimension ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx: Any) -> NamedInputs:
        """Rows ``idx`` (a slice or an index tensor), padding trimmed to the rows' longest sequence."""
        return NamedInputs({k: v[idx] for k, v in self.tensors.items()}).trimmed()

    def trimmed(self) -> NamedInputs:
        mask = self.tensors.get(MASK)
        if mask is None or mask.dim() != 2 or mask.shape[1] == 0 or len(mask) == 0:
            return self
        used = int(torch.nonzero(mask.sum(0)).max()) + 1 if bool(mask.any()) else 1
        if used == mask.shape[1]:
            return self
        return NamedInputs({k: v[:, :used] if v.dim() >= 2 else v for k, v in self.tensors.items()})

    # -- tensor-like helpers ---------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The shape of the first input (``(N, L)`` for token ids): what ``input_shape`` reads."""
        return next(iter(self.tensors.values())).shape

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> NamedInputs:
        return NamedInputs({k: v.to(device) for k, v in self.tensors.items()})

    def cpu(self) -> NamedInputs:
        return self.to("cpu")

    def data_ptr(self) -> int:
        return next(iter(self.tensors.values())).data_ptr()

    def names(self) -> list[str]:
        return list(self.tensors)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.tensors.items())

    def numpy(self) -> dict[str, np.ndarray]:
        """ONNX Runtime feeds: each input as a contiguous int64 (or float32) array."""
        return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in self.tensors.items()}

    @classmethod
    def cat(cls, parts: Sequence[NamedInputs]) -> NamedInputs:
        """Rows of several batches, padded (zeros) to the longest."""
        longest = max(p.shape[1] for p in parts) if len(parts[0].shape) > 1 else None
        out: dict[str, list[torch.Tensor]] = {}
        for p in parts:
            for k, v in p.items():
                if longest is not None and v.dim() >= 2 and v.shape[1] < longest:
                    v = torch.nn.functional.pad(v, (0, longest - v.shape[1]))
                out.setdefault(k, []).append(v)
        return cls({k: torch.cat(v) for k, v in out.items()})

    def __repr__(self) -> str:
        return f"NamedInputs({', '.join(f'{k}: {tuple(v.shape)} {v.dtype}' for k, v in self.items())})"


Batch = Union[torch.Tensor, NamedInputs]  # noqa: UP007 - used at run time
ArrayBatch = Union[np.ndarray, NamedInputs]  # noqa: UP007


def call(model: nn.Module, x: Batch) -> torch.Tensor:
    """``model(x)``, or ``model(**x)`` for named inputs."""
    if isinstance(x, NamedInputs):
        return model(**x.tensors)
    return model(x)


def input_names(model: nn.Module) -> list[str]:
    """The model's declared input names (``["input"]`` for a single-tensor model)."""
    return list(getattr(model, "input_names", None) or ["input"])


def has_named_inputs(model: nn.Module) -> bool:
    return getattr(model, "input_names", None) is not None


def output_kind(model: nn.Module) -> str:
    """What the model's output is: ``"logits"`` (a classifier: every model that does not say otherwise) or
    ``"embedding"`` (a sentence embedder declares ``output_kind``), the one default for every reader."""
    return str(getattr(model, "output_kind", "logits"))


def is_embedder(model: nn.Module) -> bool:
    """Whether the model outputs embeddings (judged by cosine, distilled with the embedding loss), not logits."""
    return output_kind(model) == "embedding"


def example_inputs(
    model: nn.Module, input_shape: Sequence[int], batch: int = 1, device: torch.device | str = "cpu"
) -> Batch:
    """Zeros shaped like one batch of the model's inputs: ``model.example_inputs(batch, seq)`` for a model
    with named inputs (``input_shape`` is ``(seq,)``), else ``torch.zeros(batch, *input_shape)``."""
    make = getattr(model, "example_inputs", None)
    if callable(make):
        seq = int(input_shape[0]) if len(input_shape) else 8
        return make(batch, seq).to(device)
    return torch.zeros(batch, *input_shape, device=device)


def as_args(model: nn.Module, x: Batch) -> tuple[torch.Tensor, ...]:
    """Positional arguments in the model's declared order (for ONNX export and tracing)."""
    if isinstance(x, NamedInputs):
        return tuple(x.tensors[n] for n in input_names(model) if n in x.tensors)
    return (x,)
