"""Target-driven plans for CNNs: how many residual blocks to remove and how wide each channel group stays, to
reach a *measured* ONNX Runtime speedup (or a MACs ratio) while keeping the most accuracy. The CNN family's
hooks on the one target search (``prune.search``: the baseline, the measurement, the band, the choice).

For each depth option (a number of blocks, from ``target.depth_fractions``):

1. the blocks are a prefix of one order: by recoverability per millisecond saved (``prune.recoverability``:
   the error of the best affine 1x1 map from a block's input to its output, over the milliseconds its removal
   saves; ``target.block_choice: recoverability``), or the lazy-greedy choice by the KD loss of the cut before
   recovery (``prune.depth.BlockScorer``: torch.fx with cached activations; ``block_choice: kd``);
2. each coupled channel group is priced: its channels' first-order KD-loss cost (Taylor: |w * dL/dw|
   of the KD loss on calibration batches) against the milliseconds it saves, read from a latency lookup
   table of the layer shapes that occur (``prune.latency_table``; the MACs themselves for a MACs target);
   NetAdapt-style, the group whose next cut of ``round_to`` channels costs the least accuracy per
   millisecond is shrunk until the predicted latency meets the target -- non-uniform widths, no export per step;
3. the candidate is built and measured against the dense model (``prune.search``: back to back, median of
   pairs). A candidate that misses the target band refits the latency table with that measurement and is
   re-planned; the one the depth offers is recovered, its BatchNorm statistics re-estimated, and its accuracy
   estimated on a validation split carved from the *training* data (KD loss and top-1 against the teacher;
   never the test set).

The plan is the candidate with the lowest estimated KD loss among those in the band
``[target, target * (1 + tolerance)]`` (a plan that overshoots throws away accuracy); the report lists every
candidate with its measured latency and estimate.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from distillprune.measure.latency import LatencyConfig
from distillprune.measure.metrics import count_macs
from distillprune.prune.channels import Group
from distillprune.prune.config import TargetConfig, WidthConfig
from distillprune.prune.criteria import accumulate_gradients
from distillprune.prune.depth import BlockScorer, removable_blocks, remove_blocks
from distillprune.prune.estimate import estimate, recalibrate_bn
from distillprune.prune.groups import apply_widths, priced_groups
from distillprune.prune.latency_table import LatencyTable, LayerShape, layer_of, layer_shapes
from distillprune.prune.recoverability import block_errors, by_recoverability
from distillprune.prune.recovery import RecoveryConfig, recover_
from distillprune.prune.search import Band, Baseline, Candidate, Measure, Option, PairedOrt, Search, measure_for

Batch = tuple[torch.Tensor, torch.Tensor | None]

__all__ = ["Candidate", "Plan", "PlanContext", "PlanInputs", "greedy_widths", "plan_target"]


@dataclass
class Plan:
    """What to remove: blocks, and each channel group's kept width (root layer -> [kept, original])."""

    target: dict[str, float]
    blocks: list[str] = field(default_factory=list)
    widths: dict[str, list[int]] = field(default_factory=dict)
    macs_ratio: float = 1.0
    speedup: float | None = None
    achieved: float | None = None  # the measured speedup (latency target) or the MACs ratio (MACs target)
    est_top1: float | None = None
    est_kd: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    lut_entries: int = 0
    note: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # channel groups left whole, and why

    def keep(self) -> dict[str, int]:
        return {root: kept for root, (kept, _) in self.widths.items()}


class _Predictor:
    """The MACs of a model described by its layer shapes (a MACs target): exact for Conv/Linear, so a depth
    needs one candidate."""

    def __init__(self, input_shape: tuple[int, ...] = ()) -> None:
        self.input_shape = input_shape

    @property
    def measured(self) -> int:
        """Latency table entries timed (for the plan's report)."""
        return 0

    def cost(self, shape: LayerShape) -> float:
        return float(shape.macs())

    def total(self, shapes: dict[str, LayerShape]) -> float:
        return sum(self.cost(s) for s in shapes.values())

    def first_goal(self, base: nn.Module, shapes: dict[str, LayerShape], dense: float, aim: float) -> float:
        """The predicted cost the first candidate of a depth (``base``: its blocks removed) aims at."""
        # the shapes count Conv/Linear MACs only: aim at the saving the target needs, not the total
        return self.total(shapes) - (count_macs(copy.deepcopy(base).cpu(), self.input_shape) - dense / aim)

    def observe(self, model: nn.Module, dense: float, measured: float | None) -> None:
        """A candidate's measured speedup (None: not timed)."""

    def next_goal(self, predicted: float, achieved: float, aim: float, dense: float) -> float | None:
        return None  # exact: nothing to correct


class _LutPredictor(_Predictor):
    """Latency (ms) from the latency lookup table, fitted to the dense model's timing and refitted to every
    measured candidate (a latency target)."""

    def __init__(self, table: LatencyTable, input_shape: tuple[int, ...]) -> None:
        super().__init__(input_shape)
        self.table = table

    @property
    def measured(self) -> int:
        return self.table.measured

    def cost(self, shape: LayerShape) -> float:
        return self.table.ms(shape)

    def first_goal(self, base: nn.Module, shapes: dict[str, LayerShape], dense: float, aim: float) -> float:
        return (dense / aim - self.table.c0) / self.table.k

    def observe(self, model: nn.Module, dense: float, measured: float | None) -> None:
        # the measurement (as ms of the dense model's first timing, so load drift cancels) refits the table
        if measured is not None:
            self.table.fit(self.table.raw(layer_shapes(model, self.input_shape).values()), dense / measured)

    def next_goal(self, predicted: float, achieved: float, aim: float, dense: float) -> float | None:
        return next_goal(predicted, achieved, aim, dense, self.table.k)


def _touched(g: Group, shapes: dict[str, LayerShape]) -> list[str]:
    """The layer calls (keys of ``shapes``) whose sizes change when ``g`` loses channels."""
    layers = set(g.outputs) | set(g.inputs)
    return [n for n in shapes if layer_of(n) in layers]


def greedy_widths(
    groups: Sequence[Group], shapes: dict[str, LayerShape], predictor: _Predictor, goal: float
) -> tuple[dict[str, int], float]:
    """Shrink, one ``round_to`` step at a time, the group whose next cut costs the least KD loss per unit of
    predicted cost saved, until the predicted total meets ``goal``. Returns (kept width per group root, the
    predicted total)."""
    size = {g.root: g.size for g in groups}
    cin = {n: s.cin for n, s in shapes.items()}
    cout = {n: s.cout for n, s in shapes.items()}
    total = predictor.total(shapes)

    def next_size(g: Group) -> int:
        s = size[g.root]
        return max(g.min_keep, ((s - 1) // g.step) * g.step)

    def delta(g: Group, new: int) -> float:
        k = size[g.root] - new
        saved = 0.0
        for name in _touched(g, shapes):
            before = shapes[name].resized(cin[name], cout[name])
            lost_in, lost_out = g.lost(layer_of(name), k)  # (a fused qkv loses 3 outputs per head channel)
            after = before.resized(cin[name] - lost_in, cout[name] - lost_out)
            cb, ca = predictor.cost(before), predictor.cost(after)
            if ca >= cb:  # a small layer's table entries are mostly per-call overhead and noise: fewer MACs
                ca = cb * after.macs() / max(before.macs(), 1)  # still save their share, so the greedy goes on
            saved += cb - ca
        return saved

    while total > goal:
        best: tuple[float, Group, int, float] | None = None
        for g in groups:
            new = next_size(g)
            if new >= size[g.root]:
                continue
            saved = delta(g, new)
            if saved <= 0:
                continue
            done = g.size - size[g.root]
            cost = sum(g.cost[c] for c in g.order[done : done + size[g.root] - new]) if g.cost else 0.0
            score = cost / saved
            if best is None or score < best[0]:
                best = (score, g, new, saved)
        if best is None:
            break  # nothing left to cut
        _, g, new, saved = best
        k = size[g.root] - new
        for name in _touched(g, shapes):
            lost_in, lost_out = g.lost(layer_of(name), k)
            cin[name] -= lost_in
            cout[name] -= lost_out
        size[g.root] = new
        total -= saved
    return size, total


@dataclass
class PlanInputs:
    """What the planner reads: calibration batches (block scores, Taylor costs, BN re-estimation) and a
    disjoint validation split of the training data (the accuracy estimate)."""

    calibration: list[Batch]
    validation: list[Batch]
    example: torch.Tensor  # one input, for tracing


@dataclass
class PlanContext:
    """What a plan is made from besides its target: the model (unchanged; work happens on copies), its teacher,
    the data, and the session's options."""

    model: nn.Module
    teacher: nn.Module
    inputs: PlanInputs
    num_classes: int
    width: WidthConfig
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]  # the Taylor costs' loss
    latency: LatencyConfig | None = None
    recovery: RecoveryConfig | None = None
    recalibrate: bool = True  # re-estimate BatchNorm after recovery (``PruneConfig.bn_samples``)
    log: Callable[[str], None] = lambda s: None


def plan_target(target: TargetConfig, ctx: PlanContext) -> Plan:
    """The plan that reaches ``target`` for ``ctx.model``. See the module docstring."""
    t0 = time.perf_counter()
    planner = _Planner.start(target, ctx)
    order, counts = planner.block_order()
    # one backward pass on the dense model: every depth option reads its Taylor costs (and taylor importance)
    # from these gradients, restricted to the layers it keeps
    accumulate_gradients(planner.dense, ctx.inputs.calibration, ctx.loss_fn)
    offers = [planner.search.offer(_Depth(planner, d, order[:d])) for d in counts]
    return planner.finish(offers, order, t0)


@dataclass
class _Planner:
    """What every candidate of one CNN plan shares: the dense model (with the Taylor gradients), the teacher's
    logits, the search (band, measurement, candidates) and the cost predictor paired with its measurement."""

    target: TargetConfig
    ctx: PlanContext
    dense: nn.Module
    t_cal: list[torch.Tensor]
    t_val: list[torch.Tensor]
    search: Search
    predictor: _Predictor
    plan: Plan

    @classmethod
    def start(cls, target: TargetConfig, ctx: PlanContext) -> _Planner:
        """Copy the dense model, take the teacher's logits, measure the dense model and (latency target) fit the
        latency table to it."""
        dense = copy.deepcopy(ctx.model).eval()
        dense.requires_grad_(True)
        ctx.teacher.eval()
        with torch.no_grad():
            t_cal = [ctx.teacher(x) for x, _ in ctx.inputs.calibration]
            t_val = [ctx.teacher(x) for x, _ in ctx.inputs.validation]
        shape = tuple(ctx.inputs.example.shape[1:])
        measure = measure_for(target, Baseline.of(dense, shape), ctx.latency)
        keys = ("latency_speedup", "macs_ratio", "batch_size")
        plan = Plan({k: v for k, v in target.model_dump().items() if k in keys and v is not None})
        goal = float(target.latency_speedup or target.macs_ratio)  # type: ignore[arg-type]
        search = Search(Band(goal, target.tolerance), measure, ctx.log, plan.candidates)
        return cls(target, ctx, dense, t_cal, t_val, search, _predictor_for(measure, dense), plan)

    @property
    def measure(self) -> Measure:
        return self.search.measure

    def block_order(self) -> tuple[list[str], list[int]]:
        """The removable blocks in the order the lazy-greedy KD-loss choice removes them (as many as the deepest
        option needs), and the number removed by each depth option."""
        blocks = removable_blocks(self.dense)
        counts = sorted({int(round(f * len(blocks))) for f in self.target.depth_fractions})
        if not counts or counts[-1] == 0:
            return [], counts
        batches = [x for x, _ in self.ctx.inputs.calibration]
        if self.target.block_choice == "recoverability":
            errors = block_errors(self.dense, blocks, batches)
            shapes = layer_shapes(self.dense, self.measure.baseline.shape)
            saved = {
                b: sum(self.predictor.cost(s) for n, s in shapes.items() if layer_of(n).startswith(f"{b}."))
                for b in blocks
            }
            order = by_recoverability(errors, saved)[: counts[-1]]
            self.ctx.log(f"blocks by recoverability per unit saved: {order}")
            return order, counts
        scorer = BlockScorer(self.dense, blocks, batches, self.t_cal)
        order = scorer.greedy(counts[-1])
        self.ctx.log(f"blocks by KD loss: {order} ({scorer.evaluations} evaluations)")
        return order, counts

    def estimate(self, cand: Candidate, model: nn.Module) -> None:
        """Recover ``model`` (the session's recovery), re-estimate its BatchNorm and estimate its accuracy on the
        validation split: candidates are compared as the session will leave them."""
        batches = [x for x, _ in self.ctx.inputs.calibration]
        recovery = self.ctx.recovery
        if recovery is not None:
            recover_(model, self.dense, batches, recovery)
        if self.ctx.recalibrate:
            recalibrate_bn(model, batches)
        est_kd, est_top1 = estimate(model, self.ctx.inputs.validation, self.t_val)
        cand.est_kd = round(est_kd, 5)
        cand.est_top1 = None if est_top1 is None else round(est_top1, 2)

    def finish(self, offers: list[tuple[Candidate, dict[str, list[int]]]], order: list[str], t0: float) -> Plan:
        """The chosen offer as the plan (``Search.choose``: the lowest estimated KD loss)."""
        plan = self.plan
        hint = (
            f"({len(plan.skipped)} layer groups left whole, see the report); allow more depth "
            "(target.depth_fractions), a larger width.max_ratio, or lower the target"
        )
        (best, widths), plan.note = self.search.choose(offers, _kd, hint)
        plan.blocks = order[: best.blocks]
        plan.widths = widths
        plan.macs_ratio = best.macs_ratio or 1.0
        plan.speedup = best.speedup
        plan.achieved = self.search.achieved(best)
        plan.est_top1, plan.est_kd = best.est_top1, best.est_kd
        plan.seconds = round(time.perf_counter() - t0, 2)
        plan.lut_entries = self.predictor.measured
        return plan


def _kd(c: Candidate) -> float:
    return c.est_kd if c.est_kd is not None else float("inf")


def _predictor_for(measure: Measure, dense: nn.Module) -> _Predictor:
    """The cost the greedy widths read, paired with the measurement: a latency table fitted to the dense model's
    timing for paired ORT timing, the MACs for a MACs target."""
    shape = measure.baseline.shape
    if not isinstance(measure, PairedOrt):
        return _Predictor(shape)
    table = LatencyTable(measure.timer.cfg, measure.batch_size)
    table.fit(table.raw(layer_shapes(dense, shape).values()), measure.dense_ms)
    return _LutPredictor(table, shape)


class _Depth(Option):
    """One depth option of a CNN: ``blocks`` removed, then the widths planned to a predicted cost (the proposal),
    built, measured and re-planned (a Newton step on the measurement) until one lands in the band."""

    estimates: ClassVar[bool] = True

    def __init__(self, planner: _Planner, d: int, blocks: list[str]) -> None:
        self.p, self.depth = planner, d
        self.base = copy.deepcopy(planner.dense)
        remove_blocks(self.base, blocks)
        _copy_grads(planner.dense, self.base)
        ctx = planner.ctx
        self.groups, left = priced_groups(self.base, ctx.inputs.example, ctx.width, ctx.num_classes)
        skipped = planner.plan.skipped
        skipped += [s.to_dict() for s in left if s.to_dict() not in skipped]
        self.shapes = layer_shapes(self.base, planner.measure.baseline.shape)
        self.keep: dict[str, int] = {}
        self.predicted = 0.0
        self.attempt = 0

    def label(self, attempt: int) -> str:
        return f"{self.depth} blocks removed" + (f", refit {attempt}" if attempt else "")

    def first(self) -> float:
        p = self.p
        return p.predictor.first_goal(self.base, self.shapes, p.measure.cost, p.search.aim)

    def build(self, goal: float) -> tuple[nn.Module, dict[str, list[int]]]:
        self.keep, self.predicted = greedy_widths(self.groups, self.shapes, self.p.predictor, goal)
        model = copy.deepcopy(self.base)
        _copy_grads(self.base, model)
        ctx = self.p.ctx
        apply_widths(model, ctx.inputs.example, ctx.width, ctx.num_classes, self.keep)
        model.zero_grad(set_to_none=True)
        return model, {g.root: [self.keep[g.root], g.size] for g in self.groups}

    def observe(self, cand: Candidate, model: nn.Module, measured: float | None) -> None:
        self.p.predictor.observe(model, self.p.measure.cost, measured)

    def next(self, goal: float, cand: Candidate, achieved: float) -> float | None:
        p, band = self.p, self.p.search.band
        self.attempt += 1
        if self.attempt > p.target.refits:
            return None
        if achieved < band.lo and all(self.keep[g.root] <= g.min_keep for g in self.groups):
            return None  # nothing left to cut at this depth
        if achieved > band.hi and all(self.keep[g.root] >= g.size for g in self.groups):
            return None  # the blocks alone overshoot: no width left to give back at this depth
        return p.predictor.next_goal(self.predicted, achieved, p.search.aim, p.measure.cost)

    def estimate(self, cand: Candidate, model: nn.Module) -> None:
        self.p.estimate(cand, model)

    def note(self, goal: float) -> str:
        return f" (predicted cost {self.predicted:.4g} for goal {goal:.4g})"


def next_goal(predicted: float, achieved: float, aim: float, dense_ms: float, slope: float) -> float:
    """The predicted cost to aim at next for one depth option, corrected by its own measurement (a Newton step):
    the candidate measured ``dense_ms / achieved`` ms at predicted cost ``predicted``; ``aim`` needs
    ``dense_ms / aim`` ms, so the goal moves by the difference over the latency table's slope (ms per unit of
    cost): up (channels given back) when the candidate was too fast, down when too slow. Anchored on this
    option's own measurement, so an offset of the global fit (per-call overhead) does not stall the refits."""
    return predicted - (dense_ms / achieved - dense_ms / aim) / max(slope, 1e-12)


def _copy_grads(src: nn.Module, dst: nn.Module) -> None:
    """deepcopy drops ``.grad``; the copies need them (Taylor costs, taylor importance): copy by name."""
    grads = {n: p.grad for n, p in src.named_parameters()}
    for n, p in dst.named_parameters():
        g = grads.get(n)
        p.grad = None if g is None or g.shape != p.shape else g.clone()
