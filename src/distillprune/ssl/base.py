"""What every self-supervised method is: an ``nn.Module`` that turns a batch without labels into a loss.

``method(model, x) -> (loss, representation)``; ``x`` is two augmented views of the images
(``data.views.Views``) for a method with ``two_views``, else the batch as the loader yields it (text: named
inputs). The method owns what training needs and the exported model does not -- projection and prediction
heads, a momentum target network, a masked-LM head -- so dropping the objective drops them: the model
that is measured, pruned and exported is the backbone alone.

Class attributes the contract tests read (``tests/contract/test_ssl_methods.py``): ``two_views``, ``inputs``
(``"images"`` or ``"text"``), ``example`` (constructor options for the tests when some are required).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from distillprune.core.batch import Batch
from distillprune.data.views import Views
from distillprune.registries import SSL_METHODS  # noqa: F401  (each method registers into it; names declared there)


class SSLMethod(nn.Module):
    two_views: ClassVar[bool] = True
    inputs: ClassVar[str] = "images"
    example: ClassVar[dict[str, Any]] = {}

    def setup(self, model: nn.Module, probe: Batch, embedding: torch.Tensor) -> None:
        """Build the heads for ``model`` from the ``embedding`` it gives the ``probe`` batch (eval mode, no
        gradients). Called before every training run: after a prune step the model has changed; heads whose
        input width is unchanged are kept."""

    def begin_epoch(self, steps: int, epoch: int, epochs: float) -> None:
        """Schedules over the run: ``steps`` batches an epoch, this is ``epoch`` (0-based) of ``epochs``."""

    def forward(self, model: nn.Module, x: Views | Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # abstract: every registered method overrides it

    def trainable(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser trains besides the model's (heads)."""
        return (p for p in self.parameters() if p.requires_grad)


def mlp(widths: list[int], batch_norm: bool = True) -> nn.Sequential:
    """Linear layers of ``widths`` (``[in, hidden..., out]``) with BatchNorm + ReLU between them (SimCLR's and
    BYOL's heads); the last Linear has no BatchNorm or ReLU."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = i == len(widths) - 2
        layers.append(nn.Linear(a, b, bias=last or not batch_norm))
        if not last:
            layers += [nn.BatchNorm1d(b)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def head_input(head: nn.Module | None) -> int | None:
    """The input width of an ``mlp`` head (None when there is none yet)."""
    first = head[0] if isinstance(head, nn.Sequential) and len(head) else None
    return first.in_features if isinstance(first, nn.Linear) else None


def views_of(x: Views | Batch, method: str) -> Views:
    if not isinstance(x, Views):
        raise TypeError(f"ssl method '{method}' learns from two views of every image; got a {type(x).__name__}")
    return x
