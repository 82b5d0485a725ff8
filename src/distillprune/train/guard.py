"""Never worse than the start: the best point of a fine-tune, judged on images held out of the training split.

A fine-tune of trained weights (a pruned and recovered student, a factorised or clustered model) starts from a
model the user already has. :class:`KeepBest` evaluates that start and then ``per_epoch`` points per epoch of
training on a validation split carved from the *training* images (never the test split; the held-out images
are not trained on), and at the end puts back the best point it saw -- the start included, so a fine-tune that
never beats its start returns the start and says so. The curve and the point kept go into the run's records.

The score is top-1 on the held-out images when they are labelled and the model is a classifier (ties broken by
the objective's loss), else the objective's loss (``eval_loss``: the distillation loss to the teacher).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from distillprune.core.batch import call, is_embedder
from distillprune.data.base import DataBundle, Split, TensorLoader, subset_indices
from distillprune.train.config import KeepBestConfig, RuntimeConfig
from distillprune.train.device import autocast, resolve_device

#: the held-out images are drawn with this seed, not the run's: every stage of a run (every prune step) holds
#: out the same images, so none of them is judged on images an earlier stage trained on
HOLDOUT_SEED = 104729


def holdout(train: Split, samples: int) -> tuple[Split, Split]:
    """``(train without the held-out images, held-out images)``: ``samples`` of them (at most a tenth of the
    split, at least one), class-balanced when labelled, seeded by :data:`HOLDOUT_SEED`."""
    n = max(1, min(samples, len(train) // 10))
    labels = None if train.y is None else train.y.cpu().numpy()
    idx = subset_indices(labels, len(train), n, HOLDOUT_SEED)
    keep = np.ones(len(train), dtype=bool)
    keep[idx] = False
    return _take(train, torch.from_numpy(np.nonzero(keep)[0])), _take(train, torch.from_numpy(idx))


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx.to(split.x.device)], None if split.y is None else split.y[idx.to(split.y.device)])


@dataclass
class Point:
    """One evaluation: after ``step`` optimizer steps of the run (``epoch``: the same in epochs of the stream)."""

    step: int
    epoch: float
    top1: float | None
    loss: float | None

    def score(self) -> tuple[float, float]:
        """Larger is better: top-1 first when there is one, then the lower loss."""
        top1 = -math.inf if self.top1 is None else self.top1
        loss = math.inf if self.loss is None or not math.isfinite(self.loss) else self.loss
        return (top1, -loss)

    def to_dict(self) -> dict:
        out: dict = {"step": self.step, "epoch": round(self.epoch, 4)}
        if self.top1 is not None:
            out["val_top1"] = round(self.top1, 3)
        if self.loss is not None:
            out["val_loss"] = round(self.loss, 6)
        return out


@dataclass
class KeepBest:
    """The checks of one ``fit`` run: where they fall (after which of its global batches), the points seen and
    the best weights so far."""

    cfg: KeepBestConfig
    val: Split
    data: DataBundle
    runtime: RuntimeConfig
    at: list[int]  # global batch indices after which a check runs
    per_epoch: int  # batches in an epoch (to express steps in epochs)
    points: list[Point] = field(default_factory=list)
    best: Point | None = None
    best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def plan(cls, cfg: KeepBestConfig, val: Split, data: DataBundle, runtime: RuntimeConfig, window) -> KeepBest:
        """Checks spread evenly over the run's batches ``[window.first, window.last)``: ``per_epoch`` an epoch,
        at least one (at the end)."""
        per_epoch = max(window.per_epoch, 1)
        count = window.last - window.first
        checks = max(1, math.ceil(cfg.per_epoch * count / per_epoch))
        at = sorted({window.first + round(count * (k + 1) / checks) - 1 for k in range(checks)})
        return cls(cfg, val, data, runtime, [a for a in at if a >= window.first], per_epoch)

    @torch.no_grad()
    def check(self, model: nn.Module, objective: nn.Module, step: int) -> Point:
        """Evaluate ``model`` after global batch ``step`` (``-1``: the start); keep its weights if it is the best."""
        point = Point(step + 1, (step + 1) / self.per_epoch, *self._evaluate(model, objective))
        self.points.append(point)
        if self.best is None or point.score() > self.best.score():
            self.best = point
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return point

    def _evaluate(self, model: nn.Module, objective: nn.Module) -> tuple[float | None, float | None]:
        device = resolve_device(self.runtime)
        was = model.training
        model.eval()
        scored = self.val.y is not None and not is_embedder(model)
        eval_loss = getattr(objective, "eval_loss", None)
        correct, total, loss_sum = 0, 0, 0.0
        try:
            for x, y in TensorLoader(self.val, 256, self.data.mean, self.data.std, device=device):
                with autocast(self.runtime, device):
                    if scored:
                        assert y is not None
                        correct += int((call(model, x).argmax(1) == y).sum())
                    if eval_loss is not None:
                        loss_sum += float(eval_loss(model, x, y)) * len(x)
                total += len(x)
        finally:
            model.train(was)
        top1 = 100.0 * correct / max(total, 1) if scored else None
        return top1, (loss_sum / max(total, 1) if eval_loss is not None else None)

    def restore(self, model: nn.Module) -> bool:
        """Put the best point's weights back into ``model``; True when that was not the last point."""
        if self.best is None or self.best_state is None or not self.points or self.best is self.points[-1]:
            return False
        model.load_state_dict(self.best_state)
        return True

    def summary(self) -> dict:
        """The curve and the point kept, for the run's last record."""
        assert self.best is not None
        out = {"checks": [p.to_dict() for p in self.points], "kept": self.best.to_dict()}
        if self.best is self.points[0]:  # the first point is the start
            out["note"] = "the fine-tune never beat its start on the held-out images: the start was kept"
        return out

    # -- resume -------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"best.{k}": v.contiguous() for k, v in (self.best_state or {}).items()}

    def meta(self) -> dict:
        points = [p.__dict__ for p in self.points]
        best = None if self.best is None else self.points.index(self.best)
        return {"points": points, "best": best}

    def load(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.points = [Point(**p) for p in meta.get("points", [])]
        best = meta.get("best")
        self.best = None if best is None else self.points[int(best)]
        state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = state or None
