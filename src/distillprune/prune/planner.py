"""Target-driven plans: how many residual blocks to remove and how wide each channel group stays, to reach a
*measured* ONNX Runtime speedup (or a MACs ratio) while keeping the most accuracy.

For each depth option (a number of blocks, from ``target.depth_fractions``):

1. the blocks are the greedy prefix of one lazy-greedy choice by KD loss (``prune.blocks.BlockScorer``:
   torch.fx with cached activations, so choosing 13 of ResNet-56's 27 blocks costs a few forwards);
2. each coupled channel group is priced: its channels' first-order KD-loss cost (Taylor: |w * dL/dw|
   of the KD loss on calibration batches) against the milliseconds it saves, read from a latency lookup
   table of the layer shapes that occur (``prune.latency_table``); NetAdapt-style, the group whose next cut
   of ``round_to`` channels costs the least accuracy per millisecond is shrunk until the predicted latency
   meets the target -- non-uniform widths, no export per step;
3. the candidate is built, its BatchNorm statistics re-estimated, and its accuracy estimated on a
   validation split carved from the *training* data (KD loss and top-1 against the teacher; never the test
   set); its speedup is measured end to end, back to back with the dense model (median of pairs). A
   candidate that misses the target band refits the latency model with that measurement and is re-planned.

The plan is the candidate with the lowest estimated KD loss among those in the band
``[target, target * (1 + tolerance)]`` (a plan that overshoots throws away accuracy); the report lists every
candidate with its measured latency and estimate.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, OrtTimer
from distillprune.measure.metrics import count_macs
from distillprune.prune.blocks import BlockScorer, remove_blocks
from distillprune.prune.config import TargetConfig, WidthConfig
from distillprune.prune.depth import removable_blocks
from distillprune.prune.groups import Group, apply_widths, gradients, priced_groups
from distillprune.prune.latency_table import LatencyTable, LayerShape, layer_of, layer_shapes
from distillprune.prune.recovery import RecoveryConfig, recover_

Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class Candidate:
    """One plan the search built and measured."""

    label: str
    blocks: int
    macs: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None  # measured, back to back with the dense model (median of pairs)
    spread: list[float] | None = None  # min and max of the pairs' speedups
    macs_ratio: float | None = None
    est_top1: float | None = None  # validation top-1 (%) before fine-tuning, BN re-estimated
    est_kd: float | None = None  # validation KD loss to the teacher (lower is better)
    in_band: bool = False
    chosen: bool = False


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
    """Latency (ms, LUT) or MACs of a model described by its layer shapes."""

    def __init__(self, table: LatencyTable | None):
        self.table = table

    def cost(self, shape: LayerShape) -> float:
        return self.table.ms(shape) if self.table is not None else float(shape.macs())

    def total(self, shapes: dict[str, LayerShape]) -> float:
        return sum(self.cost(s) for s in shapes.values())


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


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on ``batches``: after a cut, the
    statistics of the layers downstream no longer match their inputs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was = model.training
    model.train()
    for x in batches:
        model(x)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    model.train(was)


@torch.no_grad()
def estimate(
    model: nn.Module, batches: Sequence[Batch], teacher_logits: Sequence[torch.Tensor]
) -> tuple[float, float | None]:
    """(KD loss at T=1 to the teacher, top-1 % when labelled) on the validation batches."""
    from distillprune.distill.losses.kd import soft_kl

    was = model.training
    model.eval()
    kd, correct, n, labelled = 0.0, 0, 0, True
    for (x, y), t in zip(batches, teacher_logits, strict=True):
        out = model(x)
        kd += float(soft_kl(out, t, 1.0)) * len(x)
        n += len(x)
        if y is None:
            labelled = False
        else:
            correct += int((out.argmax(1) == y).sum())
    model.train(was)
    return kd / max(n, 1), (100.0 * correct / n if labelled and n else None)


@dataclass
class PlanInputs:
    """What the planner reads: calibration batches (block scores, Taylor costs, BN re-estimation) and a
    disjoint validation split of the training data (the accuracy estimate)."""

    calibration: list[Batch]
    validation: list[Batch]
    example: torch.Tensor  # one input, for tracing


def plan_target(
    model: nn.Module,
    teacher: nn.Module,
    target: TargetConfig,
    width: WidthConfig,
    inputs: PlanInputs,
    num_classes: int,
    latency: LatencyConfig | None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor],
    log: Callable[[str], None] = lambda s: None,
    recovery: RecoveryConfig | None = None,
) -> Plan:
    """The plan for ``model`` (unchanged; work happens on copies). See the module docstring."""
    t0 = time.perf_counter()
    search = _Search.start(model, teacher, target, width, inputs, num_classes, latency, recovery)
    plan = Plan(
        {
            k: v
            for k, v in target.model_dump().items()
            if k in ("latency_speedup", "macs_ratio", "batch_size") and v is not None
        }
    )
    blocks = removable_blocks(search.dense)
    counts = sorted({int(round(f * len(blocks))) for f in target.depth_fractions})
    order: list[str] = []
    if counts and counts[-1] > 0:
        scorer = BlockScorer(search.dense, blocks, [x for x, _ in inputs.calibration], search.t_cal)
        order = scorer.greedy(counts[-1])
        log(f"blocks by KD loss: {order} ({scorer.evaluations} evaluations)")
    # one backward pass on the dense model: every depth option reads its Taylor costs (and taylor importance)
    # from these gradients, restricted to the layers it keeps
    gradients(search.dense, inputs.calibration, loss_fn)
    finals = [search.depth_option(d, order[:d], plan, log) for d in counts]
    return _choose(plan, finals, order, search.band[0], search.timed, t0, search.table)


@dataclass
class _Search:
    """What every candidate of one plan shares: the dense model and its measurements, the inputs, the options."""

    dense: nn.Module
    target: TargetConfig
    width: WidthConfig
    inputs: PlanInputs
    num_classes: int
    recovery: RecoveryConfig | None
    t_cal: list[torch.Tensor]
    t_val: list[torch.Tensor]
    dense_macs: int
    table: LatencyTable | None = None
    timer: OrtTimer | None = None
    dense_onnx: bytes = b""
    dense_ms: float = 0.0

    @classmethod
    def start(
        cls,
        model: nn.Module,
        teacher: nn.Module,
        target: TargetConfig,
        width: WidthConfig,
        inputs: PlanInputs,
        num_classes: int,
        latency: LatencyConfig | None,
        recovery: RecoveryConfig | None,
    ) -> _Search:
        """Copy the dense model, take the teacher's logits, and (latency target) time the dense model and fit the
        latency table to it."""
        dense = copy.deepcopy(model).eval()
        dense.requires_grad_(True)
        teacher.eval()
        with torch.no_grad():
            t_cal = [teacher(x) for x, _ in inputs.calibration]
            t_val = [teacher(x) for x, _ in inputs.validation]
        cpu_dense = copy.deepcopy(dense).cpu()
        shape = tuple(inputs.example.shape[1:])
        s = cls(dense, target, width, inputs, num_classes, recovery, t_cal, t_val, count_macs(cpu_dense, shape))
        if target.latency_speedup is None:
            s.dense_ms = float(s.dense_macs)
            return s
        lat = (latency or LatencyConfig()).model_copy(update={"enabled": True})
        s.table, s.timer = LatencyTable(lat, target.batch_size), OrtTimer(lat)
        s.dense_onnx = onnx_bytes(cpu_dense, shape)
        s.dense_ms = s.timer.ms(s.dense_onnx, shape, target.batch_size)
        s.table.fit(s.table.raw(layer_shapes(dense, shape).values()), s.dense_ms)
        return s

    @property
    def timed(self) -> bool:
        return self.timer is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.example.shape[1:])

    @property
    def goal_ratio(self) -> float:
        return float(self.target.latency_speedup or self.target.macs_ratio)  # type: ignore[arg-type]

    @property
    def aim(self) -> float:
        """The speedup aimed at: the middle of the band when timed (noise either way stays inside it)."""
        return self.goal_ratio * (1 + self.target.tolerance / 2) if self.timed else self.goal_ratio

    @property
    def band(self) -> tuple[float, float]:
        return self.goal_ratio, self.goal_ratio * (1 + self.target.tolerance)

    def depth_option(
        self, d: int, blocks: list[str], plan: Plan, log: Callable[[str], None]
    ) -> tuple[Candidate, dict[str, list[int]]]:
        """The candidates of one depth (``blocks`` removed): widths planned, built, timed and re-planned until
        one lands in the band; only the one kept for this depth is recovered and estimated (an estimate is
        the planner's costliest step, and a candidate outside the band is never chosen over it)."""
        base = copy.deepcopy(self.dense)
        remove_blocks(base, blocks)
        _copy_grads(self.dense, base)
        groups, left = priced_groups(base, self.inputs.example, self.width, self.num_classes)
        plan.skipped += [s.to_dict() for s in left if s.to_dict() not in plan.skipped]
        shapes = layer_shapes(base, self.shape)
        predictor = _Predictor(self.table)
        goal = self._first_goal(base, shapes, predictor)
        tried: list[tuple[Candidate, dict[str, list[int]], nn.Module]] = []
        for attempt in range(self.target.refits + 1):
            keep, predicted = greedy_widths(groups, shapes, predictor, goal)
            cand, model = self.build(base, keep, d, attempt)
            achieved = _achieved(cand, self.timed)
            cand.in_band = self.band[0] <= achieved <= self.band[1]
            plan.candidates.append(cand)
            tried.append((cand, {g.root: [keep[g.root], g.size] for g in groups}, model))
            if cand.in_band or not self.timed:
                self.estimate(cand, model)
            log(f"candidate {cand.label}: {_line(cand)} (predicted cost {predicted:.4g} for goal {goal:.4g})")
            if cand.in_band or not self.timed:
                break
            if achieved < self.band[0] and all(keep[g.root] <= g.min_keep for g in groups):
                break  # nothing left to cut at this depth
            if achieved > self.band[1] and all(keep[g.root] >= g.size for g in groups):
                break  # the blocks alone overshoot: no width left to give back at this depth
            assert self.table is not None  # timed
            goal = next_goal(predicted, achieved, self.aim, self.dense_ms, self.table.k)
        cand, widths, model = self._kept(tried)
        if cand.est_kd is None:
            self.estimate(cand, model)
            log(f"candidate {cand.label} (the one this depth offers, outside the band): {_line(cand)}")
        return cand, widths

    def _kept(
        self, tried: list[tuple[Candidate, dict[str, list[int]], nn.Module]]
    ) -> tuple[Candidate, dict[str, list[int]], nn.Module]:
        """The candidate a depth offers the choice: the one in the band; else the slowest that still reaches the
        target (an overshoot gives away accuracy, but one below the target can never be chosen); else the one
        closest to the aim."""
        in_band = [t for t in tried if t[0].in_band]
        if in_band:
            return in_band[0]
        reaching = [t for t in tried if _achieved(t[0], self.timed) >= self.band[0]]
        if reaching:
            return min(reaching, key=lambda t: _achieved(t[0], self.timed))
        return min(tried, key=lambda t: abs(_achieved(t[0], self.timed) - self.aim))

    def _first_goal(self, base: nn.Module, shapes: dict[str, LayerShape], predictor: _Predictor) -> float:
        """The predicted cost (ms, or MACs) the first candidate of a depth aims at."""
        if self.table is not None:
            return (self.dense_ms / self.aim - self.table.c0) / self.table.k
        # the shapes count Conv/Linear MACs only: aim at the saving the target needs, not the total
        return predictor.total(shapes) - (count_macs(copy.deepcopy(base).cpu(), self.shape) - self.dense_ms / self.aim)

    def build(self, base: nn.Module, keep: dict[str, int], d: int, attempt: int) -> tuple[Candidate, nn.Module]:
        """Cut a copy of ``base`` to ``keep`` and (latency target) time it back to back with the dense model;
        the measurement refits the latency table."""
        model = copy.deepcopy(base)
        _copy_grads(base, model)
        apply_widths(model, self.inputs.example, self.width, self.num_classes, keep)
        model.zero_grad(set_to_none=True)
        cpu = copy.deepcopy(model).cpu().eval()
        macs = count_macs(cpu, self.shape)
        label = f"{d} blocks removed" + (f", refit {attempt}" if attempt else "")
        cand = Candidate(label, d, macs, macs_ratio=round(self.dense_macs / max(macs, 1), 3))
        if self.timer is None or self.table is None:
            return cand, model
        pair = self.timer.paired(onnx_bytes(cpu, self.shape), self.dense_onnx, self.shape, self.target.batch_size)
        cand.latency_ms = {f"ort_bs{self.target.batch_size}": round(pair.ms, 4)}
        cand.speedup, cand.spread = round(pair.speedup, 3), [round(v, 3) for v in pair.spread]
        # the measurement (as ms of the dense model's first timing, so load drift cancels) refits the predictor
        self.table.fit(self.table.raw(layer_shapes(model, self.shape).values()), self.dense_ms / pair.speedup)
        return cand, model

    def estimate(self, cand: Candidate, model: nn.Module) -> None:
        """Recover ``model`` (the session's recovery), re-estimate its BatchNorm and estimate its accuracy on the
        validation split: candidates are compared as the session will leave them."""
        batches = [x for x, _ in self.inputs.calibration]
        if self.recovery is not None:
            recover_(model, self.dense, batches, self.recovery)
        if self.recovery is None or self.recovery.recalibrate():
            recalibrate_bn(model, batches)
        est_kd, est_top1 = estimate(model, self.inputs.validation, self.t_val)
        cand.est_kd = round(est_kd, 5)
        cand.est_top1 = None if est_top1 is None else round(est_top1, 2)


def _line(c: Candidate) -> str:
    est = f"est top-1 {c.est_top1} kd {c.est_kd}" if c.est_kd is not None else "not estimated (outside the band)"
    return f"speedup {c.speedup} macs x{c.macs_ratio} {est}"


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


def _achieved(c: Candidate, timed: bool) -> float:
    return (c.speedup if timed else c.macs_ratio) or 0.0


def _choose(
    plan: Plan,
    finals: list[tuple[Candidate, dict[str, list[int]]]],
    order: list[str],
    lo: float,
    timed: bool,
    t0: float,
    table: LatencyTable | None,
) -> Plan:
    meeting = [f for f in finals if f[0].in_band] or [f for f in finals if _achieved(f[0], timed) >= lo]
    within_noise = False
    if not meeting and timed:  # no median reached it, but the pairs of some candidate straddle the target
        meeting = [f for f in finals if f[0].spread and f[0].spread[1] >= lo and _achieved(f[0], timed) >= 0.9 * lo]
        within_noise = bool(meeting)
    if not meeting:
        got = max((_achieved(c, timed) for c, _ in finals), default=None)
        what = "speedup" if timed else "MACs ratio"
        best_s = "none was built" if got is None else f"the best plan is {got:.3g}x"
        raise DistillpruneError(
            f"the cuttable layers cannot reach the target {what} {lo:g}x; {best_s} "
            f"({len(plan.skipped)} layer groups left whole, see the report); allow more depth "
            "(target.depth_fractions), a larger width.max_ratio, or lower the target"
        )
    best, widths = min(meeting, key=lambda f: f[0].est_kd if f[0].est_kd is not None else float("inf"))
    best.chosen = True
    plan.blocks = order[: best.blocks]
    plan.widths = widths
    plan.macs_ratio = best.macs_ratio or 1.0
    plan.speedup = best.speedup
    plan.achieved = _achieved(best, timed)
    plan.est_top1, plan.est_kd = best.est_top1, best.est_kd
    if within_noise and best.spread is not None:  # (every within-noise candidate has a spread)
        lo_s, hi_s = best.spread
        plan.note = (
            f"no candidate's median speedup reached the target; the chosen one measured {best.speedup} "
            f"with pairs from {lo_s} to {hi_s}: the target is within this machine's "
            "timing noise (time it again on a quieter machine)"
        )
    elif not best.in_band:
        plan.note = "no candidate landed inside the target band; the closest above the target was taken"
    plan.seconds = round(time.perf_counter() - t0, 2)
    plan.lut_entries = table.measured if table is not None else 0
    return plan
