"""Target-driven plans for CNNs: how many residual blocks to remove and how wide each channel group stays, to
reach a *measured* ONNX Runtime speedup (or a MACs ratio) while keeping the most accuracy. Predict, then
confirm: candidates are priced from a latency table, and only the finalists are timed end to end.

1. The blocks are a prefix of one order: by recoverability per millisecond saved (``prune.recoverability``,
   ``target.block_choice: recoverability``), or the lazy-greedy choice by the KD loss of the cut before
   recovery (``prune.depth.BlockScorer``: torch.fx with cached activations, on ``target.score_samples``
   calibration images; ``block_choice: kd``).
2. *Predict* (``prune.predict``): for each depth option (a number of blocks, from ``target.depth_fractions``),
   each coupled channel group is priced -- its channels' first-order KD-loss cost (Taylor: |w * dL/dw| of the
   KD loss on calibration batches) against the cost it saves, read from the latency table (each layer's
   kernel time, with a per-model correction fitted to the dense model's profile; the MACs for a MACs
   target) -- and, NetAdapt-style, the group whose next cut costs the least accuracy per millisecond is
   shrunk until the predicted speedup reaches the middle of the band. The candidate is built, its BatchNorm
   statistics re-estimated and its accuracy estimated on a validation split carved from the *training* data
   (KD loss and top-1 against the teacher; never the test set); with ``target.plan_recovery`` it is first
   recovered as the session will recover the plan (least squares per candidate: slower). Depth options
   whose blocks alone are predicted past the band are not planned beyond the first: the shallower options
   fill the gap with width.
3. *Confirm* (``prune.finalists``): the best candidates by estimated KD loss are exported and timed end to end
   against the dense model (``prune.search``: back to back, median of pairs), until ``target.finalists`` of
   them land in the band. Each timing refits the per-model correction; one that misses the band is re-planned
   from its own measurement (a Newton step, up to ``target.refits``), and a prediction that misses the
   measurement by more than 5% is said, and the candidates not yet timed are re-priced and more are timed.

The plan is the timed candidate with the lowest estimated KD loss among those in the band
``[target, target * (1 + tolerance)]`` (a plan that overshoots throws away accuracy); the report lists every
candidate with its predicted and (if timed) measured speedup and its estimate. While ``prune.plan_store``'s
``shared_plans`` is active (``tune`` trials), a plan whose inputs are all equal to an earlier one's is reused.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from distillprune.core.reporting import from_jsonable, to_jsonable
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.config import TargetConfig, WidthConfig
from distillprune.prune.criteria import accumulate_gradients
from distillprune.prune.depth import BlockScorer, removable_blocks
from distillprune.prune.estimate import estimate, recalibrate_bn
from distillprune.prune.finalists import Depth, Proposal, confirm
from distillprune.prune.latency_cache import LatencyCache, cache_folder, runtime_key
from distillprune.prune.latency_table import LatencyTable, layer_of, layer_shapes
from distillprune.prune.plan_store import PlanStore, active_store, plan_key
from distillprune.prune.predict import LatencyPricing, MacsPricing, Pricing
from distillprune.prune.recoverability import block_errors, by_recoverability
from distillprune.prune.recovery import RecoveryConfig, recover_
from distillprune.prune.search import Band, Baseline, Candidate, Measure, PairedOrt, Search, measure_for

Batch = tuple[torch.Tensor, torch.Tensor | None]

__all__ = ["Candidate", "Plan", "PlanContext", "PlanInputs", "plan_target", "say"]


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
    lut_entries: int = 0  # latency table entries timed for this plan
    lut_cached: int = 0  # entries read from the per-machine cache instead
    timed: int = 0  # candidates exported and timed end to end
    note: str | None = None
    reused: bool = False  # taken from a shared plan store (``prune.plan_store``), not planned again
    skipped: list[dict[str, str]] = field(default_factory=list)  # channel groups left whole, and why

    def keep(self) -> dict[str, int]:
        return {root: kept for root, (kept, _) in self.widths.items()}


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
    the data, and the session's options. ``progress``: say each candidate on the console as well."""

    model: nn.Module
    teacher: nn.Module
    inputs: PlanInputs
    num_classes: int
    width: WidthConfig
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]  # the Taylor costs' loss
    latency: LatencyConfig | None = None
    recovery: RecoveryConfig | None = None
    recalibrate: bool = True  # re-estimate BatchNorm after recovery (``PruneConfig.bn_samples``)
    log: Callable[[str], None] = lambda s: None  # the plan's log: the report, and the run's voice (core.progress)


def say(ctx: PlanContext, line: str) -> None:
    """A line a person follows while the plan is made, with the time since planning began (``ctx.log``: the
    report, and on the console and in ``run.log`` while the run talks). Every progress line goes through here."""
    ctx.log(line)


def plan_target(target: TargetConfig, ctx: PlanContext) -> Plan:
    """The plan that reaches ``target`` for ``ctx.model``. See the module docstring."""
    store = active_store()
    key = _key(target, ctx) if store is not None else ""
    if store is not None and (stored := store.get(key, "cnn")) is not None:
        plan = from_jsonable(Plan, stored)
        plan.reused = True
        why = "the same model, data, target and plan options"
        say(ctx, f"plan reused from {store.folder} ({why}; {plan.seconds:g} s of planning saved)")
        return plan
    t0 = time.perf_counter()
    planner = _Planner.start(target, ctx, t0)
    order, counts = planner.block_order()
    # one backward pass on the dense model: every depth option reads its Taylor costs (and taylor importance)
    # from these gradients, restricted to the layers it keeps
    accumulate_gradients(planner.dense, ctx.inputs.calibration, ctx.loss_fn)
    offers = confirm(planner, planner.predict(order, counts))
    plan = planner.finish(offers, order)
    if store is not None:
        store.put(key, "cnn", to_jsonable(plan))
    return plan


def _key(target: TargetConfig, ctx: PlanContext) -> str:
    """What the plan depends on (``prune.plan_store``): the recovery only when candidates are compared after it."""
    recovery = ctx.recovery if target.plan_recovery else None
    inputs = ctx.inputs
    return plan_key(
        "cnn-plan-1", target.model_copy(update={"latency_cache": True}), ctx.model, ctx.teacher, ctx.width,
        ctx.num_classes, ctx.latency, recovery, inputs.calibration, inputs.validation, inputs.example,
    )  # fmt: skip


@dataclass
class _Planner:
    """What every candidate of one CNN plan shares: the dense model (with the Taylor gradients), the teacher's
    logits, the search (band, measurement, candidates) and the pricing paired with its measurement."""

    target: TargetConfig
    ctx: PlanContext
    dense: nn.Module
    t_cal: list[torch.Tensor]
    t_val: list[torch.Tensor]
    search: Search
    pricing: Pricing
    plan: Plan
    t0: float

    @classmethod
    def start(cls, target: TargetConfig, ctx: PlanContext, t0: float) -> _Planner:
        """Copy the dense model, take the teacher's logits, measure the dense model and (latency target) fit the
        latency table's correction to its profile."""
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
        pricing = _pricing_for(target, measure, dense, ctx.log)
        return cls(target, ctx, dense, t_cal, t_val, search, pricing, plan, t0)

    @property
    def measure(self) -> Measure:
        return self.search.measure

    def say(self, line: str) -> None:
        say(self.ctx, f"[plan {time.perf_counter() - self.t0:6.1f} s] {line}")

    def block_order(self) -> tuple[list[str], list[int]]:
        """The removable blocks in the order the configured choice removes them (as many as the deepest option
        needs), and the number removed by each depth option."""
        blocks = removable_blocks(self.dense)
        counts = sorted({int(round(f * len(blocks))) for f in self.target.depth_fractions})
        if not counts or counts[-1] == 0:
            return [], counts
        batches = [x for x, _ in self.ctx.inputs.calibration]
        if self.target.block_choice == "recoverability":
            errors = block_errors(self.dense, blocks, batches)
            shapes = layer_shapes(self.dense, self.measure.baseline.shape)
            saved = {
                b: sum(self.pricing.cost(s) for n, s in shapes.items() if layer_of(n).startswith(f"{b}."))
                for b in blocks
            }
            order = by_recoverability(errors, saved)[: counts[-1]]
            self.say(f"blocks by recoverability per unit saved: {order}")
            return order, counts
        xs, ts = _first_samples(batches, self.t_cal, self.target.score_samples)
        return self._by_kd(blocks, xs, ts, counts[-1]), counts

    def _by_kd(self, blocks: list[str], xs: list[torch.Tensor], ts: list[torch.Tensor], n: int) -> list[str]:
        """The lazy-greedy KD-loss order of ``n`` blocks, read from the per-machine cache when this model was
        scored on these images before (another target of the same model), else scored and kept there."""
        folder = cache_folder(self.target.latency_cache)
        store = None if folder is None else PlanStore(folder / "blocks", root=folder)
        key = plan_key("block-order-kd-1", self.dense, blocks, xs, ts)
        got = store.get(key, "block order") if store is not None else None
        order = got.get("order") if isinstance(got, dict) else None
        if store is not None and isinstance(order, list) and len(order) >= n and set(order) <= set(blocks):
            self.say(f"blocks by KD loss: {order[:n]} (scored before on these images: read from {store.folder})")
            return order[:n]
        scorer = BlockScorer(self.dense, blocks, xs, ts)
        order = scorer.greedy(n)
        count = sum(len(x) for x in xs)
        self.say(f"blocks by KD loss: {order} ({scorer.evaluations} evaluations on {count} images)")
        if store is not None:
            try:
                store.put(key, "block order", {"order": order})
            except (OSError, DistillpruneError) as e:
                self.ctx.log(f"block order not kept in {store.folder} ({str(e).splitlines()[0] if str(e) else e!r})")
        return order

    def predict(self, order: list[str], counts: list[int]) -> list[Proposal]:
        """Every depth option's candidate, planned to the middle of the band by the pricing, built and estimated
        (nothing timed). Options deeper than the first whose blocks alone are predicted past the band are left out:
        they overshoot further, and the shallower options reach the band with width."""
        out: list[Proposal] = []
        band = self.search.band
        for i, d in enumerate(counts):
            option = Depth(self, d, order[:d])
            alone = self.pricing.ratio(option.shapes)
            past = alone > band.hi
            prop = option.propose(option.full() if past else self.pricing.goal(self.search.aim), attempt=0)
            assert prop.model is not None  # (dropped only once timed)
            self.estimate(prop.cand, prop.model)
            out.append(prop)
            left = len(counts) - i - 1
            self.say(f"predicted {i + 1}/{len(counts)}: {prop.line()}; {left} depth option(s) to go")
            self.pricing.flush()
            if past and left:
                self.say(
                    f"the blocks of {d} removed alone are predicted at {alone:.2f}x, past the band "
                    f"[{band.lo:g}, {band.hi:.3g}]: the {left} deeper option(s) are not planned (width fills the gap)"
                )
                break
        return out

    def estimate(self, cand: Candidate, model: nn.Module) -> None:
        """Re-estimate ``model``'s BatchNorm statistics (after the session's recovery, with
        ``target.plan_recovery``) and estimate its accuracy on the validation split."""
        batches = [x for x, _ in self.ctx.inputs.calibration]
        recovery = self.ctx.recovery if self.target.plan_recovery else None
        if recovery is not None:
            recover_(model, self.dense, batches, recovery)
        if self.ctx.recalibrate:
            recalibrate_bn(model, batches)
        est_kd, est_top1 = estimate(model, self.ctx.inputs.validation, self.t_val)
        cand.est_kd = round(est_kd, 5)
        cand.est_top1 = None if est_top1 is None else round(est_top1, 2)

    def finish(self, offers: list[tuple[Candidate, dict[str, list[int]]]], order: list[str]) -> Plan:
        """The chosen offer as the plan (``Search.choose``: the lowest estimated KD loss), said on the console."""
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
        plan.seconds = round(time.perf_counter() - self.t0, 2)
        plan.lut_entries, plan.lut_cached = self.pricing.measured, self.pricing.cached
        plan.timed = sum(1 for c in plan.candidates if c.speedup is not None and c.macs < self.measure.baseline.macs)
        self.pricing.flush()
        band = self.search.band
        where = "in the band" if best.in_band else "OUTSIDE the band"
        self.say(
            f"plan: {best.label}, {self.measure.what} {plan.achieved:.3g}x {where} [{band.lo:g}, {band.hi:.3g}], "
            f"est top-1 {best.est_top1}; {len(plan.candidates)} candidates, {plan.timed} timed, "
            f"{plan.lut_entries} table entries timed, {plan.lut_cached} from the cache"
        )
        if plan.note:
            self.say(f"note: {plan.note}")
        return plan


def _kd(c: Candidate) -> float:
    return c.est_kd if c.est_kd is not None else float("inf")


def _first_samples(
    batches: list[torch.Tensor], logits: list[torch.Tensor], n: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first ``n`` samples of the batches (and of the teacher's logits on them)."""
    xs: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []
    for x, t in zip(batches, logits, strict=True):
        left = n - sum(len(v) for v in xs)
        if left <= 0:
            break
        xs.append(x[:left])
        ts.append(t[:left])
    return xs, ts


def _pricing_for(target: TargetConfig, measure: Measure, dense: nn.Module, log: Callable[[str], None]) -> Pricing:
    """The pricing paired with the measurement: the latency table (cached per machine) fitted to the dense model's
    profile for paired ORT timing, the MACs for a MACs target."""
    shape = measure.baseline.shape
    shapes = layer_shapes(dense, shape)
    if not isinstance(measure, PairedOrt):
        return MacsPricing.of(measure.baseline.macs, shapes)
    folder = cache_folder(target.latency_cache)
    threads = measure.timer.cfg.threads
    cache = None if folder is None else LatencyCache(folder, runtime_key(threads, measure.batch_size), log)
    table = LatencyTable(measure.timer.cfg, measure.batch_size, cache)
    return LatencyPricing(table, shapes, table.model_ms(measure.dense_onnx, shape))
