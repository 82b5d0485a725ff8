"""The self-supervised training objective the trainer runs: ``objective(model, x, y) -> (loss, output)``.

It holds the method (its heads), asks the loader for two augmented views of every image (``views``), reads
no label (``label_free``: the trainer serves none) and needs no teacher. Heads are built when it is attached
to a model (``attach``), so one objective follows a model through prune steps; they are trained with it
(``trainable``) and saved in the trainer's epoch checkpoints (for ``--resume``), never in the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distillprune.core.batch import Batch, call, is_embedder
from distillprune.data.views import Views, ViewsConfig
from distillprune.errors import DistillpruneError
from distillprune.ssl.config import SSLConfig


class SSLObjective(nn.Module):
    label_free = True

    def __init__(self, cfg: SSLConfig, tokenizer: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.method = cfg.build(tokenizer=tokenizer)
        self.views: ViewsConfig | None = cfg.views_config()

    def attach(self, model: nn.Module, probe: Batch) -> None:
        if not is_embedder(model):
            raise DistillpruneError(
                f"ssl method '{self.cfg.method}' trains an embedding model, but {type(model).__name__} outputs "
                "logits: set model.task: embedding (a zoo model's classifier is dropped; an hf encoder pools)"
            )
        was = model.training
        model.eval()  # the probe must not move BatchNorm statistics
        try:
            with torch.no_grad():
                embedding = call(model, probe)
        finally:
            model.train(was)
        self.method.setup(model, probe, embedding)

    def detach(self) -> None:
        """Nothing to remove: the method's hooks live only inside a step."""

    def begin_epoch(self, loader, epoch: int, epochs: float) -> None:  # type: ignore[no-untyped-def]
        self.method.begin_epoch(len(loader), epoch, epochs)

    def forward(self, model: nn.Module, x: Views | Batch, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method(model, x)

    def trainable(self) -> Iterator[nn.Parameter]:
        return self.method.trainable()

    def to_device(self, device: torch.device) -> SSLObjective:
        return self.to(device)
