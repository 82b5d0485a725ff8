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
from typing import TYPE_CHECKING

import torch
from torch import nn

from distillprune.core.batch import Batch, NamedInputs, call
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details, details_type, from_jsonable, to_jsonable
from distillprune.data.base import DataBundle, TensorLoader, normalize, standard_layout
from distillprune.distill.distiller import snapshot
from distillprune.distill.losses.kd import soft_kl
from distillprune.distill.modes import Objective, objective_for
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.blocks import remove_blocks
from distillprune.prune.config import DepthConfig, PruneConfig, WidthConfig
from distillprune.prune.depth import choose_blocks
from distillprune.prune.groups import apply_widths
from distillprune.prune.history import ChannelsOp, RemoveBlockOp, SparsityOp
from distillprune.prune.importance import NEEDS_GRADIENTS
from distillprune.prune.planner import Plan, PlanInputs, plan_target, recalibrate_bn
from distillprune.prune.recovery import RecoveryConfig, RecoveryReport, recover_
from distillprune.prune.structured import accumulate_gradients, classifier_layers, prune_step, width_pruner
from distillprune.prune.unstructured import MagnitudeMasks, cubic_sparsity
from distillprune.train import distributed as ddp
from distillprune.train.config import TrainSummary

if TYPE_CHECKING:
    import torch_pruning as tp

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
    log: list[str] = field(default_factory=list)  # what the planner decided, step by step
    skipped: list[dict[str, str]] = field(default_factory=list)  # width: layer groups left alone, and why
    recovery: list[RecoveryReport] = field(default_factory=list)  # one per structural cut (prune.recovery)

    def __post_init__(self) -> None:
        self.history: list[HistoryOp] = []  # the ops this run added (not part of the JSON report)


class PruneSession:
    """``PruneSession(model, cfg, data=..., teacher=...).run()`` prunes ``model`` in place.

    ``data``: calibration batches for depth scoring and Taylor importance, and the training data of the
    default trainer. Without data, ``example_inputs`` serves as the only calibration batch and nothing
    trains (``epochs_per_step`` must be 0). ``history``: a list that receives the typed ops (an ArchSpec's).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: PruneConfig,
        *,
        data: DataBundle | None = None,
        teacher: nn.Module | None = None,
        peer: nn.Module | None = None,
        example_inputs: torch.Tensor | None = None,
        num_classes: int | None = None,
        history: list[HistoryOp] | None = None,
        trainer: Trainer | None = None,
        latency: LatencyConfig | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        seed: int = 0,
    ):
        if data is None and example_inputs is None:
            raise DistillpruneError("prune needs data (a DataBundle) or example_inputs")
        if cfg.epochs_per_step and trainer is None:
            raise DistillpruneError("epochs_per_step > 0 needs training data: pass data=... (or a trainer)")
        if cfg.width is not None and cfg.width.importance in NEEDS_GRADIENTS and data is None:
            raise DistillpruneError(f"importance '{cfg.width.importance}' needs gradients: pass data=...")
        if num_classes is None and data is None:
            raise DistillpruneError(
                "prune without data needs num_classes=... (the classifier's output size: "
                "the layers that produce it are never pruned)"
            )
        self.model, self.cfg, self.data = model, cfg, data
        self.device = torch.device(device)
        if data is not None:
            self.num_classes = num_classes if num_classes is not None else data.num_classes
            self.input_shape = tuple(data.input_shape)
        else:
            assert num_classes is not None and example_inputs is not None  # both checked above
            self.num_classes, self.input_shape = num_classes, tuple(example_inputs.shape[1:])
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
        self._pruner: tp.pruner.BasePruner | None = None
        self._masks: MagnitudeMasks | None = None
        self._records: list[dict] = []
        self._done = 0

    # -- phases ----------------------------------------------------------------------------------------
    def prepare(self) -> Plan | None:
        """Teacher, objective and (with a target) the plan; nothing is removed yet."""
        cfg = self.cfg
        self.model.to(self.device).eval()
        if self._teacher_given is not None:
            teacher = self._teacher_given
        else:
            teacher = snapshot(self.model)  # the unpruned self
        self.teacher = teacher.to(self.device)
        self.objective = objective_for(cfg.distill, cfg.label_smoothing, lambda: teacher, self._peer)
        if cfg.target is not None:
            assert cfg.width is not None
            width, target = cfg.width, cfg.target
            # measured on rank 0 alone under torchrun, and shared: every rank follows one plan
            self.plan = ddp.once(
                lambda: plan_target(
                    self.model,
                    teacher,
                    target,
                    width,
                    self.plan_inputs(),
                    self.num_classes,
                    self.latency,
                    taylor_loss(teacher),
                    self.log,
                    cfg.recovery_config(),
                ),
                to_jsonable,
                lambda d: from_jsonable(Plan, d),
            )
            self.report.plan = self.plan
        return self.plan

    def step(self, k: int) -> None:
        """Pruning step ``k`` (0-based): cut, then train ``epochs_per_step`` epochs."""
        if self.objective is None:
            raise DistillpruneError("PruneSession.step() before prepare()")
        if k != self._done:
            raise DistillpruneError(f"PruneSession.step({k}): the next step is {self._done}")
        cfg = self.cfg
        recovery = cfg.recovery_config() if (self.plan is not None or self.width or (k == 0 and self.depth)) else None
        before = snapshot(self.model) if recovery is not None else None  # what the cut starts from
        # under torchrun rank 0 decides the cut (scores, latency) and the other ranks replay its history ops
        ddp.replicate(lambda: self._cut(k), self.history, self._replay, self.report)
        ddp.check_same_architecture(self.model, self.history, f"after prune step {k + 1}")
        if recovery is not None and before is not None:  # the same seeded batches on every rank: same weights
            self._recover(before, recovery)
        recal = cfg.bn_recalibration
        if self.plan is not None and not recal and cfg.target is not None:  # the planner's estimate assumed it
            recal = max(1, -(-cfg.target.calib_samples // self.batch_size))
        if recovery is not None and not recovery.recalibrate():
            recal = 0  # the re-fit layers match the dense pre-BN outputs its kept statistics normalise
        if recal and (self.plan is not None or self.width or (k == 0 and self.depth)):
            recalibrate_bn(self.model, [x for x, _ in self.calibration(recal)])  # same seeded batches on every rank
        if cfg.unstructured:  # magnitude masks: the weights, hence the masks, are the same on every rank
            self._sparsity_step(k)
        if cfg.epochs_per_step:
            assert self.trainer is not None
            on_step = self._masks.apply if self._masks else None
            self._records += self.trainer(self.model, self.objective, cfg.epochs_per_step, f"step{k + 1}", on_step)
        self._done += 1

    def _cut(self, k: int) -> None:
        if self.plan is not None:
            self._planned_step(k)
            return
        if k == 0 and self.depth:
            self._remove_blocks(self.depth)
        if self.width:
            self._width_step()
            if k == self.cfg.steps - 1 and not any(self.report.channels_removed.values()):
                raise DistillpruneError(nothing_removed(self.width))

    def _replay(self, op: HistoryOp) -> None:
        """Redo another rank's cut here (torch-pruning traces the model on the CPU)."""
        op.replay(self.model.cpu(), self.input_shape)
        self.model.to(self.device)
        self._record(op)

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

    def log(self, message: str) -> None:
        self.report.log.append(message)

    def plan_inputs(self) -> PlanInputs:
        """Calibration batches and a disjoint validation split, both from the training data (never the test
        set); without data, the example inputs serve as both."""
        assert self.cfg.target is not None
        if self.data is None:
            assert self.example is not None
            ex = self.example.to(self.device)
            return PlanInputs([(ex, None)], [(ex, None)], ex[:1])
        t, split = self.cfg.target, self.data.train
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(self.seed + 11))
        n_val = min(t.val_samples, len(split) // 4)
        val, cal = perm[:n_val], perm[n_val : n_val + t.calib_samples]
        return PlanInputs(
            self._batches(cal),
            self._batches(val),
            normalize(tensor_inputs(split.x[:1]), self.data.mean, self.data.std).to(self.device),
        )

    def _batches(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        assert self.data is not None
        d, out = self.data, []
        for i in range(0, len(idx), self.batch_size):
            j = idx[i : i + self.batch_size].to(d.train.x.device)
            x = standard_layout(normalize(tensor_inputs(d.train.x[j]), d.mean, d.std)).to(self.device)
            out.append((x, None if d.train.y is None else d.train.y[j].to(self.device)))
        return out

    def _planned_step(self, k: int) -> None:
        """Step ``k`` of a planned prune: the planned blocks first, then every group a share of the way to
        its planned width (all of it on the last step)."""
        assert self.plan is not None and self.cfg.width is not None and self.teacher is not None
        if k == 0 and self.plan.blocks:
            remove_blocks(self.model, self.plan.blocks)
            for p in self.plan.blocks:
                self._record(RemoveBlockOp(p))
            self.report.removed_blocks += self.plan.blocks
        frac, step = (k + 1) / self.cfg.steps, self.cfg.width.round_to or 1
        keep = {}
        for root, (kept, size) in self.plan.widths.items():
            want = size - (size - kept) * frac
            keep[root] = kept if k + 1 == self.cfg.steps else max(kept, int(round(want / step)) * step)
        if self.cfg.width.importance in NEEDS_GRADIENTS:
            accumulate_gradients(self.model, self.calibration(self.cfg.width.taylor_batches), taylor_loss(self.teacher))
        example = torch.zeros(1, *self.input_shape, device=self.device)
        op = apply_widths(self.model, example, self.cfg.width, self.num_classes, keep)
        self.model.zero_grad(set_to_none=True)
        if op is not None:
            self._record(op)
            for name, n in op.removed().items():
                self.report.channels_removed[name] = self.report.channels_removed.get(name, 0) + n

    def calibration(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``n`` shuffled, normalised training batches (seeded), or the example inputs without data."""
        if self.data is None:
            assert self.example is not None
            return [(self.example.to(self.device), None)]
        d = self.data
        loader = TensorLoader(
            d.train, self.batch_size, d.mean, d.std, shuffle=True, seed=self.seed + 1, device=self.device
        )
        return [(tensor_inputs(x), y) for _, (x, y) in zip(range(n), loader, strict=False)]

    def _remove_blocks(self, depth: DepthConfig) -> None:
        assert self.teacher is not None
        batches = [x for x, _ in self.calibration(depth.calib_batches)]
        chosen = choose_blocks(self.model, self.teacher, batches, depth.blocks)
        for p in chosen:
            self._record(RemoveBlockOp(p))
        self.report.removed_blocks += chosen

    def _recover(self, before: nn.Module, cfg: RecoveryConfig) -> None:
        """Re-fit the cut model toward ``before`` (``prune.recovery.recover_``), on seeded training batches."""
        n = -(-cfg.calib_samples // self.batch_size)
        calib = [x for x, _ in self.calibration(n)] if self.data is not None else None
        example = None if self.example is None else self.example.to(self.device)
        rep = recover_(self.model, before, calib, cfg, seed=self.seed, example=example)
        self.report.recovery.append(rep)
        self.log(rep.summary())

    def _width_step(self) -> None:
        assert self.width is not None and self.teacher is not None
        if self._pruner is None:
            example = torch.zeros(1, *self.input_shape, device=self.device)
            self._pruner = width_pruner(self.model, example, self.width, self.num_classes, self.cfg.steps)
        if self.width.importance in NEEDS_GRADIENTS:
            accumulate_gradients(self.model, self.calibration(self.width.taylor_batches), taylor_loss(self.teacher))
        op = ChannelsOp(prune_step(self._pruner))
        self.report.skipped = [g.to_dict() for g in self._pruner.skipped]
        self._record(op)
        for name, n in op.removed().items():
            self.report.channels_removed[name] = self.report.channels_removed.get(name, 0) + n
        self.model.zero_grad(set_to_none=True)

    def _sparsity_step(self, k: int) -> None:
        u = self.cfg.unstructured
        assert u is not None
        if self._masks is None:
            self._masks = MagnitudeMasks(self.model, u.scope, classifier_layers(self.model, self.num_classes), u.layers)
        self._masks.update(u.sparsity if u.schedule == "oneshot" else cubic_sparsity(k + 1, self.cfg.steps, u.sparsity))


def nothing_removed(width: WidthConfig) -> str:
    """Why a width-pruning request that removed no channel is an error, and what to change."""
    return (
        f"width pruning with ratio {width.ratio} and round_to {width.round_to} removes no channel: every "
        "prunable layer keeps all its channels after rounding (or width.layers selects no prunable layer); "
        "raise width.ratio or lower width.round_to"
    )


def tensor_inputs(x: Batch) -> torch.Tensor:
    """``x`` as the one tensor that width/depth pruning and the planner feed a model (``refuse_named_width``
    turns models with named inputs away before a session starts)."""
    if isinstance(x, NamedInputs):
        raise DistillpruneError(
            "width/depth pruning and target plans take tensor inputs, got named inputs "
            f"({', '.join(x.names())}): prune a transformer's heads / ffn / layers instead"
        )
    return x


def taylor_loss(teacher: nn.Module) -> Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The loss whose gradients score channels for Taylor importance: KL to the teacher (+ CE with labels)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            t = call(teacher, x)
        s = call(model, x)
        kd = soft_kl(s, t, 1.0)
        return kd if y is None else kd + torch.nn.functional.cross_entropy(s, y)

    return loss
