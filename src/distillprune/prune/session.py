"""Prune while distilling: the product's central algorithm, as a library object.

``PruneSession(model, cfg, ...)`` runs ``prepare -> step x cfg.steps -> finish``:

* ``prepare``: place the model, freeze the teacher (the unpruned model unless one is given), build the
  training objective (KD from the teacher by default), and, with a ``target``, search the plan (how many
  blocks, how wide) that reaches it.
* ``step(k)``: on the first step remove the residual blocks whose removal raises the KD loss least (and
  re-fit the width to the target); then remove a share of channels (Torch-Pruning's dependency graph;
  Taylor importance from the KD loss's gradients), or raise the unstructured sparsity; then train
  ``epochs_per_step`` epochs with the objective, so the net recovers before the next cut.
* ``finish``: make masks permanent and return a :class:`PruneReport`.

Every structural change is recorded as a typed history op (``history``), so the result saves as a
checkpoint and rebuilds from data. ``distillprune.prune_`` and the recipe's ``prune`` stage both run
this object; the stage only supplies a trainer that checkpoints each epoch for ``--resume``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from distillprune.core.batch import call
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle, TensorLoader
from distillprune.distill.distiller import snapshot
from distillprune.distill.losses.kd import soft_kl
from distillprune.distill.modes import Objective, objective_for
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.config import DepthConfig, PruneConfig, WidthConfig
from distillprune.prune.depth import choose_blocks
from distillprune.prune.history import ChannelsOp, RemoveBlockOp, SparsityOp
from distillprune.prune.importance import NEEDS_GRADIENTS
from distillprune.prune.search import Plan, search
from distillprune.prune.structured import accumulate_gradients, classifier_layers, prune_step, width_pruner
from distillprune.prune.unstructured import MagnitudeMasks, cubic_sparsity
from distillprune.train.config import TrainSummary

#: ``trainer(model, objective, epochs, tag, on_step) -> per-epoch records``: how the session trains between
#: steps (``tag`` is "step1", "step2"...; the pipeline's trainer checkpoints under it for --resume)
Trainer = Callable[[nn.Module, Objective, int, str, Callable[[nn.Module], None] | None], list[dict]]


@details_type
@dataclass
class PruneReport(Details):
    """What a prune run did."""

    kind = "prune"
    steps: int
    removed_blocks: list[str] = field(default_factory=list)
    channels_removed: dict[str, int] = field(default_factory=dict)  # output channels removed per layer
    plan: Plan | None = None
    sparsity: float | None = None
    training: TrainSummary | None = None

    def __post_init__(self) -> None:
        self.history: list[HistoryOp] = []  # the ops this run added (not part of the JSON report)


class PruneSession:
    """``PruneSession(model, cfg, data=..., teacher=...).run()`` prunes ``model`` in place.

    ``data``: calibration batches for depth scoring and Taylor importance, and the training data of the
    default trainer. Without data, ``example_inputs`` serves as the only calibration batch and nothing
    trains (``epochs_per_step`` must be 0). ``history``: a list that receives the typed ops (an ArchSpec's).
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig, *, data: DataBundle | None = None,
                 teacher: nn.Module | None = None, peer: nn.Module | None = None,
                 example_inputs: torch.Tensor | None = None, num_classes: int | None = None,
                 history: list[HistoryOp] | None = None, trainer: Trainer | None = None,
                 latency: LatencyConfig | None = None, device: torch.device | str = "cpu",
                 batch_size: int = 64, seed: int = 0):
        if data is None and example_inputs is None:
            raise DistillpruneError("prune needs data (a DataBundle) or example_inputs")
        if cfg.epochs_per_step and trainer is None:
            raise DistillpruneError("epochs_per_step > 0 needs training data: pass data=... (or a trainer)")
        needs_grads = cfg.width is not None and cfg.width.importance in NEEDS_GRADIENTS
        if needs_grads and data is None:
            raise DistillpruneError(f"importance '{cfg.width.importance}' needs gradients: pass data=...")
        self.model, self.cfg, self.data = model, cfg, data
        self.device = torch.device(device)
        self.num_classes = num_classes if num_classes is not None else data.num_classes  # type: ignore[union-attr]
        self.input_shape = tuple(data.input_shape) if data is not None else tuple(example_inputs.shape[1:])
        self.example = example_inputs
        self.history = history if history is not None else []
        self.trainer, self.latency = trainer, latency
        self.batch_size, self.seed = batch_size, seed
        self._teacher_given, self._peer = teacher, peer
        self.teacher: nn.Module | None = None
        self.objective: Objective | None = None
        self.plan: Plan | None = None
        self.width: WidthConfig | None = cfg.width
        self.depth: DepthConfig | None = cfg.depth
        self.report = PruneReport(cfg.steps)
        self._dense: nn.Module | None = None
        self._pruner = None
        self._masks: MagnitudeMasks | None = None
        self._records: list[dict] = []
        self._done = 0

    # -- phases ----------------------------------------------------------------------------------------
    def prepare(self) -> Plan | None:
        """Teacher, objective and (with a target) the plan; nothing is removed yet."""
        cfg = self.cfg
        self.model.to(self.device).eval()
        if self._teacher_given is not None:
            self.teacher = self._teacher_given
        else:
            self.teacher = snapshot(self.model)  # the unpruned self
        self.teacher.to(self.device)
        self.objective = objective_for(cfg.distill, cfg.label_smoothing, lambda: self.teacher, self._peer)
        if cfg.target is not None:
            self._dense = snapshot(self.model)  # the reference of the target
            self.plan = search(self.model, self.input_shape, self.num_classes, cfg.width, cfg.target,
                               self.latency)
            self.report.plan = self.plan
            self.depth = DepthConfig(blocks=self.plan.blocks) if self.plan.blocks else None
            self.width = self._width_at(self.plan.width_ratio)
        return self.plan

    def step(self, k: int) -> None:
        """Pruning step ``k`` (0-based): cut, then train ``epochs_per_step`` epochs."""
        if self.objective is None:
            raise DistillpruneError("PruneSession.step() before prepare()")
        if k != self._done:
            raise DistillpruneError(f"PruneSession.step({k}): the next step is {self._done}")
        cfg = self.cfg
        if k == 0 and self.depth:
            self._remove_blocks(self.depth)
        if self.width:
            self._width_step()
        if cfg.unstructured:
            self._sparsity_step(k)
        if cfg.epochs_per_step:
            assert self.trainer is not None
            on_step = self._masks.apply if self._masks else None
            self._records += self.trainer(self.model, self.objective, cfg.epochs_per_step, f"step{k + 1}", on_step)
        self._done += 1

    def finish(self) -> PruneReport:
        if self._masks is not None:
            self._masks.apply()
            self.report.sparsity = round(self._masks.sparsity(), 4)
            self._record(SparsityOp(self.report.sparsity))
        self.report.training = TrainSummary.of(self._records)
        self.model.eval()
        return self.report

    def run(self) -> PruneReport:
        self.prepare()
        for k in range(self.cfg.steps):
            self.step(k)
        return self.finish()

    # -- pieces ----------------------------------------------------------------------------------------
    def _record(self, op: HistoryOp) -> None:
        self.history.append(op)
        self.report.history.append(op)

    def _width_at(self, ratio: float) -> WidthConfig | None:
        assert self.cfg.width is not None
        return self.cfg.width.model_copy(update={"ratio": ratio}) if ratio > 0 else None

    def calibration(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``n`` shuffled, normalised training batches (seeded), or the example inputs without data."""
        if self.data is None:
            assert self.example is not None
            return [(self.example.to(self.device), None)]
        d = self.data
        loader = TensorLoader(d.train, self.batch_size, d.mean, d.std, shuffle=True, seed=self.seed + 1,
                              device=self.device)
        return [b for _, b in zip(range(n), loader, strict=False)]

    def _remove_blocks(self, depth: DepthConfig) -> None:
        assert self.teacher is not None
        batches = [x for x, _ in self.calibration(depth.calib_batches)]
        chosen = choose_blocks(self.model, self.teacher, batches, depth.blocks)
        for p in chosen:
            self._record(RemoveBlockOp(p))
        self.report.removed_blocks += chosen
        if self.cfg.target is not None:  # the search assumed other blocks: re-fit the width to the real ones
            assert self.cfg.width is not None and self.plan is not None
            target = self.cfg.target.model_copy(update={"depth_fractions": [0.0]})
            refit = search(self.model, self.input_shape, self.num_classes, self.cfg.width, target, self.latency,
                           baseline=self._dense)
            self.plan = self.report.plan = Plan(self.plan.blocks, refit.width_ratio, refit.macs_ratio, refit.speedup)
            self.width = self._width_at(refit.width_ratio)

    def _width_step(self) -> None:
        assert self.width is not None and self.teacher is not None
        if self._pruner is None:
            example = torch.zeros(1, *self.input_shape, device=self.device)
            self._pruner = width_pruner(self.model, example, self.width, self.num_classes, self.cfg.steps)
        if self.width.importance in NEEDS_GRADIENTS:
            accumulate_gradients(self.model, self.calibration(self.width.taylor_batches), taylor_loss(self.teacher))
        op = ChannelsOp(prune_step(self._pruner))
        self._record(op)
        for name, n in op.removed().items():
            self.report.channels_removed[name] = self.report.channels_removed.get(name, 0) + n
        self.model.zero_grad(set_to_none=True)

    def _sparsity_step(self, k: int) -> None:
        u = self.cfg.unstructured
        assert u is not None
        if self._masks is None:
            self._masks = MagnitudeMasks(self.model, u.scope, classifier_layers(self.model, self.num_classes),
                                         u.layers)
        self._masks.update(u.sparsity if u.schedule == "oneshot" else cubic_sparsity(k + 1, self.cfg.steps, u.sparsity))


def taylor_loss(teacher: nn.Module) -> Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The loss whose gradients score channels for Taylor importance: KL to the teacher (+ CE with labels)."""
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            t = call(teacher, x)
        s = call(model, x)
        kd = soft_kl(s, t, 1.0)
        return kd if y is None else kd + torch.nn.functional.cross_entropy(s, y)

    return loss
