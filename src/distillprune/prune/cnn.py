"""The CNN family's structure: residual blocks, channel groups (Torch-Pruning's dependency graph) and
unstructured magnitude masks, cut for :class:`~distillprune.prune.session.PruneSession`.

* ``plan``: with a target, the planner (``prune.planner``) searches how many blocks to remove and how wide
  each channel group stays.
* ``cut(k)``: on the first step remove the residual blocks whose removal raises the KD loss least (or the
  planned ones); then remove a share of channels (Taylor importance from the KD loss's gradients), or,
  planned, move every group a share of the way to its planned width.
* ``settle(k)``: re-estimate BatchNorm statistics, raise the unstructured sparsity.
* ``finish``: make masks permanent; a :class:`PruneReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.batch import Batch, NamedInputs, call, has_named_inputs
from distillprune.core.history import HistoryOp
from distillprune.core.progress import note
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import normalize, standard_layout
from distillprune.distill.distiller import snapshot
from distillprune.distill.losses.kd import soft_kl
from distillprune.errors import DistillpruneError
from distillprune.prune.channels import classifier_layers, enumerate_groups
from distillprune.prune.config import DepthConfig, PruneConfig, WidthConfig
from distillprune.prune.criteria import criterion
from distillprune.prune.depth import choose_blocks, remove_blocks
from distillprune.prune.estimate import recalibrate_bn
from distillprune.prune.groups import WidthCut, apply_widths
from distillprune.prune.history import ChannelsOp, RemoveBlockOp, SparsityOp
from distillprune.prune.planner import Plan, PlanContext, PlanInputs, plan_target
from distillprune.prune.recovery import RecoveryConfig, RecoveryReport, recover_
from distillprune.prune.schedule import Initial, cubic_sparsity, planned_keep, step_ratio, uniform_keep
from distillprune.prune.structure import Session, Structure, structure_for_config
from distillprune.prune.unstructured import MagnitudeMasks
from distillprune.train.config import TrainSummary

if TYPE_CHECKING:
    from distillprune.data.base import DataBundle


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


@structure_for_config(PruneConfig)
class CnnStructure(Structure):
    """Blocks, channels and masks of a CNN (tensor inputs)."""

    plan_type = Plan

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        cfg = session.cfg
        assert isinstance(cfg, PruneConfig)  # registered for PruneConfig (and its subclasses)
        self.cfg = cfg
        self.width: WidthConfig | None = cfg.width
        self.depth: DepthConfig | None = cfg.depth
        self.plan_: Plan | None = None
        self._report = PruneReport(cfg.steps)
        self._initial = Initial()  # the groups' widths when a uniform step first met them
        self._masks: MagnitudeMasks | None = None
        self._recovery: RecoveryConfig | None = None  # in force for the step being cut
        self._before: nn.Module | None = None  # the model as the cut found it (what recovery matches)

    @classmethod
    def check(cls, model: nn.Module, cfg: BaseModel, data: DataBundle | None) -> None:
        assert isinstance(cfg, PruneConfig)  # this structure is registered for PruneConfig (and its subclasses)
        refuse_named_width(model, cfg)
        if cfg.width is not None and criterion(cfg.width.importance).needs_gradients and data is None:
            raise DistillpruneError(f"importance '{cfg.width.importance}' needs gradients: pass data=...")

    @property
    def report(self) -> PruneReport:
        return self._report

    # -- the protocol --------------------------------------------------------------------------------------
    def plan(self) -> Plan | None:
        s, target = self.session, self.cfg.target
        if target is None:
            return None
        assert self.cfg.width is not None and s.teacher is not None
        ctx = PlanContext(
            s.model,
            s.teacher,
            self.plan_inputs(),
            s.num_classes,
            self.cfg.width,
            taylor_loss(s.teacher),
            s.latency,
            self.cfg.recovery_config(),
            self.cfg.bn_samples(planned=True) > 0,
            self.log,
        )
        return plan_target(target, ctx)

    def use_plan(self, plan: Plan | None) -> None:
        self.plan_ = plan
        self._report.plan = plan

    def cut(self, k: int) -> None:
        if self.plan_ is not None:
            self._planned_step(k)
            return
        if k == 0 and self.depth:
            self._remove_blocks(self.depth)
        if self.width:
            self._width_step(k)
            if k == self.cfg.steps - 1 and not any(self._report.channels_removed.values()):
                raise NothingRemoved(nothing_removed(self.width))

    def before_cut(self, k: int) -> None:
        structural = self.plan_ is not None or self.width or (k == 0 and self.depth)
        self._recovery = self.cfg.recovery_config() if structural else None
        self._before = snapshot(self.session.model) if self._recovery is not None else None

    def settle(self, k: int) -> None:
        cfg, s = self.cfg, self.session
        recovery, before, self._before = self._recovery, self._before, None
        if recovery is not None and before is not None:  # the same seeded batches on every rank: same weights
            self._recover(before, recovery)
        samples = cfg.bn_samples(planned=self.plan_ is not None)
        if samples and (self.plan_ is not None or self.width or (k == 0 and self.depth)):
            recalibrate_bn(s.model, [x for x, _ in self._calibration(samples)])  # same seeded batches on every rank
        if cfg.unstructured:  # magnitude masks: the weights, hence the masks, are the same on every rank
            self._sparsity_step(k)

    def on_train_step(self) -> Callable[[nn.Module], None] | None:
        return self._masks.apply if self._masks else None

    def finish(self) -> PruneReport:
        if self._masks is not None:
            self._masks.apply()
            self._report.sparsity = round(self._masks.sparsity(), 4)
            self.session.record(SparsityOp(self._report.sparsity))
        return self._report

    # -- pieces ----------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A planner decision: in the report, and as it happens on stdout and in ``run.log``
        (``core.progress.note``)."""
        self._report.log.append(message)
        note(message)

    def _recover(self, before: nn.Module, cfg: RecoveryConfig) -> None:
        """Re-fit the cut model toward ``before`` (``prune.recovery.recover_``), on seeded training batches."""
        s = self.session
        calib = [x for x, _ in self._calibration(cfg.calib_samples)] if s.data is not None else None
        example = None if s.example is None else s.example.to(s.device)
        rep = recover_(s.model, before, calib, cfg, seed=s.seed, example=example)
        self._report.recovery.append(rep)
        self.log(rep.summary())

    def _calibration(self, samples: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [(tensor_inputs(x), y) for x, y in self.session.calibration(samples)]

    def plan_inputs(self) -> PlanInputs:
        """Calibration batches and a disjoint validation split, both from the training data (never the test
        set); without data, the example inputs serve as both."""
        s = self.session
        assert self.cfg.target is not None
        if s.data is None:
            assert s.example is not None
            ex = s.example.to(s.device)
            return PlanInputs([(ex, None)], [(ex, None)], ex[:1])
        t, split = self.cfg.target, s.data.train
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(s.seed + 11))
        n_val = min(t.val_samples, len(split) // 4)
        val, cal = perm[:n_val], perm[n_val : n_val + t.calib_samples]
        return PlanInputs(
            self._batches(cal),
            self._batches(val),
            normalize(tensor_inputs(split.x[:1]), s.data.mean, s.data.std).to(s.device),
        )

    def _batches(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        s = self.session
        assert s.data is not None
        d, out = s.data, []
        for i in range(0, len(idx), s.batch_size):
            j = idx[i : i + s.batch_size].to(d.train.x.device)
            x = standard_layout(normalize(tensor_inputs(d.train.x[j]), d.mean, d.std)).to(s.device)
            out.append((x, None if d.train.y is None else d.train.y[j].to(s.device)))
        return out

    def _planned_step(self, k: int) -> None:
        """Step ``k`` of a planned prune: the planned blocks first, then every group a share of the way to
        its planned width (all of it on the last step)."""
        s, plan, width = self.session, self.plan_, self.cfg.width
        assert plan is not None and width is not None and s.teacher is not None
        if k == 0 and plan.blocks:
            remove_blocks(s.model, plan.blocks)
            for p in plan.blocks:
                s.record(RemoveBlockOp(p))
            self._report.removed_blocks += plan.blocks
        keep = planned_keep(plan.widths, k, self.cfg.steps, width.round_to or 1)
        self._cut_widths(lambda groups: keep)

    def _cut_widths(self, keep_of: Callable[[list], dict[str, int]]) -> None:
        """Enumerate the groups (scored, with the KD loss's gradients when the criterion needs them), cut each to
        the width ``keep_of(groups)`` gives it, through the one cutter, and record the cut."""
        s, width = self.session, self.cfg.width
        assert width is not None and s.teacher is not None
        crit = criterion(width.importance)
        if crit.needs_gradients:
            crit.prepare(s.model, self._calibration(width.calib_samples), taylor_loss(s.teacher))
        example = torch.zeros(1, *s.input_shape, device=s.device)
        found = enumerate_groups(s.model, example, width, s.num_classes, crit)
        cut = apply_widths(s.model, example, width, s.num_classes, keep_of(found.groups), groups=found)
        s.model.zero_grad(set_to_none=True)
        self._note(cut)

    def _note(self, cut: WidthCut) -> None:
        """The cut's op and the groups left whole (each named once over the steps)."""
        named = {(g["layer"], g["reason"]) for g in self._report.skipped}
        self._report.skipped += [g.to_dict() for g in cut.skipped if (g.layer, g.reason) not in named]
        if cut.op is not None:
            self._count(cut.op)

    def _count(self, op: ChannelsOp) -> None:
        self.session.record(op)
        for name, n in op.removed().items():
            self._report.channels_removed[name] = self._report.channels_removed.get(name, 0) + n

    def _remove_blocks(self, depth: DepthConfig) -> None:
        s = self.session
        assert s.teacher is not None
        batches = [x for x, _ in self._calibration(depth.calib_samples)]
        chosen = choose_blocks(s.model, s.teacher, batches, depth.blocks)
        for p in chosen:
            s.record(RemoveBlockOp(p))
        self._report.removed_blocks += chosen

    def _width_step(self, k: int) -> None:
        """Step ``k`` of a uniform width prune (``prune.schedule.uniform_keep``)."""
        w = self.width
        assert w is not None and w.ratio is not None
        ratio = step_ratio(w.ratio, k, self.cfg.steps)
        self._cut_widths(lambda groups: uniform_keep(groups, self._initial, ratio, w.max_ratio, w.global_pruning))

    def _sparsity_step(self, k: int) -> None:
        u, s = self.cfg.unstructured, self.session
        assert u is not None
        if self._masks is None:
            self._masks = MagnitudeMasks(s.model, u.scope, classifier_layers(s.model, s.num_classes), u.layers)
        self._masks.update(u.sparsity if u.schedule == "oneshot" else cubic_sparsity(k + 1, self.cfg.steps, u.sparsity))


class NothingRemoved(DistillpruneError):
    """A width request that removed no channel (the recipe's preflight checks it before training)."""


def nothing_removed(width: WidthConfig) -> str:
    """Why a width-pruning request that removed no channel is an error, and what to change."""
    return (
        f"width pruning with ratio {width.ratio} and round_to {width.round_to} removes no channel: every "
        "prunable layer keeps all its channels after rounding (or width.layers selects no prunable layer); "
        "raise width.ratio or lower width.round_to"
    )


def refuse_named_width(model: nn.Module, cfg: PruneConfig) -> None:
    """Channel (width) and residual-block (depth) pruning do not fit encoders with named inputs: their Q/K/V
    would lose columns while the head count stays, and their layers are no residual blocks."""
    if has_named_inputs(model) and (cfg.width is not None or cfg.depth is not None):
        raise DistillpruneError(
            "width/depth pruning does not fit a transformer with named inputs: prune its "
            "heads / ffn / layers instead (a prune_transformer stage, or prune_(model, "
            "{'heads': {'ratio': ...}, 'ffn': {'ratio': ...}, 'layers': {'drop': ...}}, data=...))"
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
