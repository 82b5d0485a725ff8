"""Prune while distilling: the product's central algorithm, as a library object, for every model family.

``PruneSession(model, cfg, ...)`` runs ``prepare -> step x cfg.steps -> finish``:

* ``prepare``: place the model, freeze the teacher (the unpruned model unless one is given), build the
  training objective (KD from the teacher by default), and, with a ``target``, let the family's structure
  plan what to cut -- on rank 0 alone under ``torchrun``, the plan shared with every rank.
* ``step(k)``: the structure cuts (on rank 0; the other ranks replay its history ops), every rank checks
  it holds the same architecture and settles (BatchNorm statistics, masks), then trains
  ``epochs_per_step`` epochs with the objective, so the net recovers before the next cut.
* ``finish``: the structure's report, with the training summary.

What is cut and how belongs to the family's :class:`~distillprune.prune.structure.Structure`, found by the
config's type: ``PruneConfig`` -> CNN blocks / channels / masks (``prune.cnn``), ``TransformerPruneConfig`` ->
encoder heads / FFN neurons / layers (``transformers.structure``). Every structural change is a typed history
op (``history``), so the result saves as a checkpoint and rebuilds from data. ``distillprune.prune_`` and
the recipe's prune stages all run this object; a stage only supplies a trainer that checkpoints each epoch
for ``--resume``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillprune.core.batch import Batch
from distillprune.core.history import HistoryOp
from distillprune.core.progress import phase
from distillprune.core.reporting import Details, from_jsonable, to_jsonable
from distillprune.data.base import DataBundle, Examples, TensorLoader
from distillprune.distill.distiller import snapshot
from distillprune.distill.modes import Objective, objective_for
from distillprune.errors import DistillpruneError
from distillprune.prune.alignment import kept_channels
from distillprune.prune.config import SessionConfig
from distillprune.prune.structure import Structure, structure_type
from distillprune.train import distributed as ddp
from distillprune.train.config import Span, TrainSummary
from distillprune.train.context import Context
from distillprune.train.device import resolve_device
from distillprune.train.trainers import Trainer

__all__ = ["PruneSession", "Trainer"]


class PruneSession:
    """``PruneSession(model, cfg, data=..., teacher=...).run()`` prunes ``model`` in place.

    ``cfg``: a family's prune config (``PruneConfig``, ``TransformerPruneConfig``, or a stage's config).
    ``data``: calibration batches (block / layer scores, importance) and the training data; or
    ``Examples(inputs, num_classes)``: the first batch of ``inputs`` is the only calibration batch and
    nothing trains (``epochs_per_step`` must be 0). ``trainer``: how to train between steps (a
    ``train.trainers.Trainer``; required when ``epochs_per_step`` > 0). ``history``: a list that receives
    the typed ops (an ArchSpec's). ``context``: the device (``runtime``), the calibration batches' size and
    seed (``loader``) and how a latency target is timed (``latency``). ``peer``: mutual mode's second
    network, when it is not a copy of the teacher.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: SessionConfig,
        data: DataBundle | Examples | None = None,
        *,
        teacher: nn.Module | None = None,
        peer: nn.Module | None = None,
        trainer: Trainer | None = None,
        history: list[HistoryOp] | None = None,
        context: Context | None = None,
    ):
        bundle = data if isinstance(data, DataBundle) else None
        kind = structure_type(cfg)
        kind.check(model, cfg, bundle)
        if data is None:
            raise DistillpruneError(
                "prune needs data: a DataBundle, or Examples(inputs, num_classes) for one-shot pruning"
            )
        if cfg.epochs_per_step and trainer is None:
            raise DistillpruneError("epochs_per_step > 0 needs training data: pass data=... (or a trainer)")
        if isinstance(data, Examples) and data.num_classes is None:
            raise DistillpruneError(
                "prune without a data set needs Examples(inputs, num_classes=...) (the classifier's output "
                "size: the layers that produce it are never pruned)"
            )
        ctx = context or Context()
        self.model, self.data = model, bundle
        self.cfg = cfg  # the family's config: its structure reads its own fields
        self.device = resolve_device(ctx.runtime)
        if isinstance(data, Examples):
            assert data.num_classes is not None  # checked above
            self.num_classes, self.input_shape = data.num_classes, data.input_shape
            self.example: torch.Tensor | None = data.batches()[0]
        else:
            self.num_classes, self.input_shape = data.num_classes, tuple(data.input_shape)
            self.example = None
        self.history = history if history is not None else []
        self.trainer, self.latency = trainer, ctx.latency
        self.batch_size, self.seed = ctx.loader.batch_size, ctx.loader.seed
        self._teacher_given, self._peer = teacher, peer
        self.teacher: nn.Module | None = None
        self.objective: Objective | None = None
        self.plan: Any | None = None
        self.structure: Structure = kind(self)
        self.report: Details = self.structure.report
        self._records: list[dict] = []
        self._done = 0
        self._aligned_from = 0

    # -- phases ----------------------------------------------------------------------------------------
    def prepare(self) -> Any | None:
        """Teacher, objective and (with a target) the plan; nothing is removed yet."""
        self.model.to(self.device).eval()
        if self._teacher_given is not None:
            teacher = self._teacher_given
        else:
            teacher = snapshot(self.model)  # the unpruned self
        self.teacher = teacher.to(self.device)
        # the history ops that turn the teacher into the student (channel-aligned losses replay them): this
        # run's when the teacher is the model as it is now, else all of them (a teacher from before them)
        self._aligned_from = len(self.history) if same_shapes(teacher, self.model) else 0
        cfg = self.cfg
        distill = self.structure.distill_config()
        ssl = getattr(cfg, "ssl", None)  # a self-supervised objective instead of KD (no teacher, no labels)
        self.objective = objective_for(distill, cfg.label_smoothing, lambda: teacher, self._peer, ssl)
        if cfg.target is not None:
            plan_type: Any = self.structure.plan_type
            # measured on rank 0 alone under torchrun, and shared: every rank follows one plan
            search = phase("target search")(self.structure.plan)
            self.plan = ddp.once(search, to_jsonable, lambda d: None if d is None else from_jsonable(plan_type, d))
            self.structure.use_plan(self.plan)
        return self.plan

    def step(self, k: int) -> None:
        """Pruning step ``k`` (0-based): cut, then train ``epochs_per_step`` epochs."""
        if self.objective is None:
            raise DistillpruneError("PruneSession.step() before prepare()")
        if k != self._done:
            raise DistillpruneError(f"PruneSession.step({k}): the next step is {self._done}")
        cfg = self.cfg
        self.structure.before_cut(k)
        # under torchrun rank 0 decides the cut (scores, latency) and the other ranks replay its history ops
        cut = phase(f"cut {k + 1}/{cfg.steps}")(self.structure.cut)
        ddp.replicate(lambda: cut(k), self.history, self._replay, self.report)
        ddp.check_same_architecture(self.model, self.history, f"after prune step {k + 1}")
        align = getattr(self.objective, "align", None)
        if callable(align):  # losses that compare kept channels with the teacher's (distill.losses.aligned)
            ops, teacher = self.history[self._aligned_from :], self.teacher
            assert teacher is not None  # set by prepare()
            align(lambda: kept_channels(teacher, ops, self.input_shape))
        self.structure.settle(k)
        if cfg.epochs_per_step:
            assert self.trainer is not None
            on_step = self.structure.on_train_step()
            args = (self.model, self.objective, cfg.epochs_per_step, f"step{k + 1}", on_step)
            span = step_span(cfg.epochs_per_step, cfg.steps, cfg.lr_span, k)
            self._records += self.trainer(*args) if span is None else self.trainer(*args, span)
        self._done += 1

    def _replay(self, op: HistoryOp) -> None:
        """Redo another rank's cut here (torch-pruning traces the model on the CPU)."""
        op.replay(self.model.cpu(), self.input_shape)
        self.model.to(self.device)
        self.record(op)

    def finish(self) -> Any:
        """The structure's report (its type is the family's: ``PruneReport``, ``TransformerPruneReport``)."""
        report = self.structure.finish()
        report.training = TrainSummary.of(self._records)  # type: ignore[attr-defined]
        self.model.eval()
        return report

    def run(self) -> Any:
        self.prepare()
        for k in range(self.cfg.steps):
            self.step(k)
        return self.finish()

    # -- what structures use ---------------------------------------------------------------------------
    def record(self, op: HistoryOp) -> None:
        """Append ``op`` to the history and to the report's ops."""
        self.history.append(op)
        self.report.history.append(op)  # type: ignore[attr-defined]

    def calibration(self, samples: int) -> list[tuple[Batch, torch.Tensor | None]]:
        """Shuffled, normalised training batches (seeded) holding at least ``samples`` inputs (whole batches), or
        the example inputs without data."""
        n = max(1, -(-samples // self.batch_size))
        if self.data is None:
            assert self.example is not None
            return [(self.example.to(self.device), None)]
        d = self.data
        loader = TensorLoader(
            d.train, self.batch_size, d.mean, d.std, shuffle=True, seed=self.seed + 1, device=self.device
        )
        return [(x, y) for _, (x, y) in zip(range(n), loader, strict=False)]


def step_span(epochs_per_step: float, steps: int, lr_span: str, k: int) -> Span | None:
    """Where step ``k``'s training sits in the stage's: a fractional step continues through the epoch where
    the last one stopped (a whole number of epochs per step replays epochs 0.. each step, as it always has);
    ``lr_span: stage`` runs one lr schedule over all the steps. None: the step is a run of its own."""
    e = epochs_per_step
    start = 0.0 if float(e).is_integer() else k * e
    schedule = (k * e, steps * e) if lr_span == "stage" else None
    return None if start == 0 and schedule is None else Span(start, schedule)


def same_shapes(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models have the same parameter and buffer shapes (one architecture, one width)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
