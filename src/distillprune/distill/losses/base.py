"""The one signature every distillation loss has.

``loss(student: Outputs, teacher: Outputs, targets: Tensor | None) -> Tensor`` (a scalar).
For sequence inputs (text) ``Outputs.mask`` is the (B, L) attention mask (1 for real tokens), so
token-level losses average over real tokens only.
``targets`` is None for label-free distillation. A loss that reads intermediate features
declares them in ``taps`` as (student_path, teacher_path) pairs; the Distiller installs the
hooks. Losses with trainable parts (adapters, embedding heads) build them in ``setup`` from probe
outputs. Gradients must never reach the teacher: a loss reads ``teacher.detach()``.

Class attributes declare the properties the contract tests (tests/contract) check per loss:
``zero_when_equal`` (the loss is 0 when the student's outputs equal the teacher's), ``needs_labels``
(cannot run label-free), ``reads_teacher`` (False only for plain label terms such as ``ce``),
``width_free`` (the student's and the teacher's tensors may differ in width, since the loss compares
relations within the batch or learns projections: only the batch sizes must match), ``schedulable``
(float options a recipe may ramp over a stage; each is an attribute of that name),
``example`` (constructor options for the contract tests when some option is required).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from distillprune.errors import DistillpruneError
from distillprune.registries import LOSSES  # noqa: F401  (each loss registers into it; names declared there)


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (B, L) attention mask of sequence inputs; None for images

    def detach(self) -> Outputs:
        return Outputs(self.logits.detach(), {k: v.detach() for k, v in self.features.items()}, self.mask)


def sequence_mask(x: Any) -> torch.Tensor | None:
    """The attention mask of a batch of named (text) inputs, else None."""
    tensors = getattr(x, "tensors", None)
    return tensors.get("attention_mask") if isinstance(tensors, dict) else None


class DistillLoss(nn.Module):
    taps: list[tuple[str, str]] = []
    zero_when_equal: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    reads_teacher: ClassVar[bool] = True
    width_free: ClassVar[bool] = False
    schedulable: ClassVar[tuple[str, ...]] = ()
    example: ClassVar[dict[str, Any]] = {}

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build trainable parts from one probe batch (shapes are known only then)."""

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError  # abstract: every registered loss overrides it


def same_shape(s: torch.Tensor, t: torch.Tensor, what: str = "logits") -> None:
    if s.shape != t.shape:
        raise DistillpruneError(f"student {what} {tuple(s.shape)} and teacher {what} {tuple(t.shape)} differ")


def same_batch(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape[0] != t.shape[0]:
        raise DistillpruneError(f"student {what} has batch {s.shape[0]} but teacher {what} has {t.shape[0]}")


def parse_pairs(pairs: Any, loss: str) -> list[tuple[str, str]]:
    """``[[student_path, teacher_path], ...]`` or ``[path, ...]`` (same path in both nets)."""
    if not pairs or not isinstance(pairs, (list, tuple)):
        raise ValueError(f"{loss}.pairs needs at least one [student_module, teacher_module] pair, got {pairs!r}")
    out = []
    for p in pairs:
        if isinstance(p, str):
            out.append((p, p))
        elif isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(q, str) for q in p):
            out.append((p[0], p[1]))
        else:
            raise ValueError(f"{loss}.pairs: expected a module path or a [student, teacher] pair, got {p!r}")
    return out


def parse_tap(tap: Any, loss: str) -> list[tuple[str, str]]:
    """``None`` (use the logits), a module path (same in both nets) or a [student, teacher] pair."""
    if tap is None:
        return []
    return parse_pairs([tap], loss)


def embedding_pair(
    taps: list[tuple[str, str]], student: Outputs, teacher: Outputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, D) student and teacher embeddings of the first tap (the logits without one), same batch checked."""
    s_path, t_path = taps[0] if taps else (None, None)
    es, et = tapped(student, s_path), tapped(teacher, t_path)
    same_batch(es, et, f"'{s_path or 'logits'}'")
    return es, et


def tapped(out: Outputs, path: str | None) -> torch.Tensor:
    """The tapped feature flattened to (B, D), or the logits when no tap is set."""
    x = out.logits if path is None else out.features[path]
    return x.float().flatten(1)
