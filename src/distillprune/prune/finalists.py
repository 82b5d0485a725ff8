"""Predict, then confirm: the depth options of a CNN plan (``prune.planner``) and the finalists that are timed.

A :class:`Depth` is one depth option: its blocks removed, its channel groups priced, and its widths planned by
the pricing (``prune.predict.greedy_widths``) to a cost goal; each plan of it is a :class:`Proposal` -- the
candidate built (never exported), its predicted speedup, its estimate. :func:`confirm` times the proposals in
the order of their estimated KD loss (those predicted in the band first) until ``target.finalists`` of them
land in the band:

* every timing (the candidate exported and timed back to back with the dense model) refits the pricing's
  per-model correction, and is recorded as predicted against measured speedup;
* a candidate that misses the band is re-planned from its own measurement (``prune.predict.next_goal``, up
  to ``target.refits`` times per depth option) and the new plan joins the queue;
* a prediction more than :data:`TOLERANCE` off the measurement is said; the proposals not yet timed are
  re-priced with the refitted correction (re-planned when they left the band) and one more finalist is wanted.

With an exact pricing (a MACs target) every proposal is measured when it is built (its MACs counted), and a
miss is re-planned the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from distillprune.measure.metrics import count_macs
from distillprune.prune.config import TargetConfig
from distillprune.prune.depth import remove_blocks
from distillprune.prune.groups import apply_widths, priced_groups
from distillprune.prune.latency_table import layer_shapes
from distillprune.prune.predict import Pricing, Shapes, greedy_widths, next_goal
from distillprune.prune.search import Candidate, Measure, Search

__all__ = ["TOLERANCE", "Depth", "Proposal", "confirm"]

#: a predicted speedup further than this from the measured one is a miss: more is timed
TOLERANCE = 0.05
Offer = tuple[Candidate, dict[str, list[int]]]


class _Planner(Protocol):
    """What the depth options and the confirmation read of the plan being made (``prune.planner._Planner``;
    a protocol, so this module does not import the planner that imports it)."""

    target: TargetConfig
    ctx: Any  # prune.planner.PlanContext
    dense: nn.Module
    search: Search
    pricing: Pricing
    plan: Any  # prune.planner.Plan

    @property
    def measure(self) -> Measure: ...

    def estimate(self, cand: Candidate, model: nn.Module) -> None: ...

    def say(self, line: str) -> None: ...


@dataclass
class Proposal:
    """One plan of a depth option: the candidate, the widths it keeps, the built model (dropped once timed) and
    its layer shapes."""

    option: Depth
    cand: Candidate
    keeps: dict[str, list[int]]
    model: nn.Module | None
    shapes: Shapes
    attempt: int

    def line(self) -> str:
        c = self.cand
        est = "" if c.est_kd is None else f", est top-1 {c.est_top1} kd {c.est_kd} (on training images: optimistic)"
        return f"{c.label}: predicted {c.predicted}x, macs x{c.macs_ratio}{est}"


class Depth:
    """One depth option of a CNN: ``blocks`` removed, then the widths planned to a cost goal (see the module
    docstring)."""

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

    def label(self, attempt: int) -> str:
        return f"{self.depth} blocks removed" + (f", re-plan {attempt}" if attempt else "")

    @staticmethod
    def full() -> float:
        """The goal of the blocks alone (no width cut)."""
        return float("inf")

    def propose(self, goal: float, attempt: int) -> Proposal:
        """The widths that meet ``goal``, built (not exported) and counted; measured at once by an exact pricing."""
        keep, shapes = greedy_widths(self.groups, self.shapes, self.p.pricing, goal)
        return self._build(keep, shapes, attempt)

    def _build(self, keep: dict[str, int], shapes: Shapes, attempt: int) -> Proposal:
        p = self.p
        model = copy.deepcopy(self.base)
        _copy_grads(self.base, model)
        ctx = p.ctx
        # no ONNX check here: the cutter checked each group at its deepest cut (priced_groups), a finalist is
        # exported when it is timed, and the session's own cut checks the plan
        apply_widths(model, ctx.inputs.example, ctx.width, ctx.num_classes, keep, onnx=False)
        model.zero_grad(set_to_none=True)
        baseline = p.measure.baseline
        shapes = layer_shapes(model, baseline.shape)  # as cut (a group the cutter rolled back keeps its width)
        macs = count_macs(model, baseline.shape)
        cand = Candidate(self.label(attempt), self.depth, macs, macs_ratio=round(baseline.macs / max(macs, 1), 3))
        cand.predicted = round(p.pricing.ratio(shapes), 3)
        if p.pricing.exact:
            cand.in_band = p.search.band.contains(p.search.achieved(cand))
        p.search.candidates.append(cand)
        keeps = {g.root: [keep[g.root], g.size] for g in self.groups}
        return Proposal(self, cand, keeps, model, shapes, attempt)

    def replan(self, prop: Proposal, achieved: float) -> Proposal | None:
        """The next plan after ``prop`` measured ``achieved`` outside the band (None: this option stops)."""
        p, band = self.p, self.p.search.band
        if prop.attempt >= p.target.refits:
            return None
        kept = {root: k for root, (k, _) in prop.keeps.items()}
        if achieved < band.lo and all(kept[g.root] <= g.min_keep for g in self.groups):
            return None  # nothing left to cut at this depth
        if achieved > band.hi and all(kept[g.root] >= g.size for g in self.groups):
            return None  # the blocks alone overshoot: no width left to give back at this depth
        goal = next_goal(p.pricing, prop.shapes, achieved, p.search.aim)
        keep, shapes = greedy_widths(self.groups, self.shapes, p.pricing, goal)
        if keep == kept:
            return None  # the goal moved less than one cut
        return self._estimated(self._build(keep, shapes, prop.attempt + 1))

    def repriced(self, prop: Proposal) -> Proposal:
        """``prop`` with the refitted pricing: its prediction updated, re-planned when it left the band."""
        p = self.p
        prop.cand.predicted = round(p.pricing.ratio(prop.shapes), 3)
        if p.search.band.contains(prop.cand.predicted):
            return prop
        keep, shapes = greedy_widths(self.groups, self.shapes, p.pricing, p.pricing.goal(p.search.aim))
        if keep == {root: k for root, (k, _) in prop.keeps.items()}:
            return prop
        new = self._build(keep, shapes, prop.attempt)
        new.cand.label += ", re-priced"
        return self._estimated(new)

    def _estimated(self, prop: Proposal) -> Proposal:
        assert prop.model is not None
        self.p.estimate(prop.cand, prop.model)
        return prop


def confirm(planner: _Planner, proposals: list[Proposal]) -> list[Offer]:
    """The offers the plan is chosen from: the proposals timed end to end (see the module docstring)."""
    if planner.pricing.exact:
        return _exact(planner, proposals)
    return _Finals(planner, proposals).run()


def _exact(planner: _Planner, proposals: list[Proposal]) -> list[Offer]:
    """Each option's proposals until one lands in the band (re-planned from its counted MACs); the one it offers
    (``Search.kept``)."""
    offers = []
    for prop in proposals:
        tried = [prop]
        while not tried[-1].cand.in_band:
            nxt = prop.option.replan(tried[-1], planner.search.achieved(tried[-1].cand))
            if nxt is None:
                break
            tried.append(nxt)
            planner.say(f"re-planned: {nxt.line()}")
        kept = planner.search.kept([(t.cand, t.keeps, nn.Identity()) for t in tried])
        offers.append((kept[0], kept[1]))
    return offers


class _Finals:
    """The timing queue of a latency plan."""

    def __init__(self, planner: _Planner, proposals: list[Proposal]) -> None:
        self.p = planner
        self.pending = list(proposals)
        self.timed: list[Proposal] = []
        self.want = planner.target.finalists
        self.budget = planner.target.finalists + planner.target.refits * len(proposals) + 1
        self.confirmed = 0
        self.spread = planner.measure.timer.cfg.max_spread  # type: ignore[attr-defined]  # (timed: PairedOrt)

    def run(self) -> list[Offer]:
        while self.pending and self.confirmed < self.want and len(self.timed) < self.budget:
            self.pending.sort(key=self._rank)
            prop = self.pending.pop(0)
            achieved = self._time(prop)
            if prop.cand.in_band:
                self.confirmed += 1
            else:
                nxt = prop.option.replan(prop, achieved)
                if nxt is not None:
                    self.pending.append(nxt)
                    self.p.say(f"re-planned from its measurement: {nxt.line()}")
            c = prop.cand
            if c.prediction_error is not None and abs(c.prediction_error) > TOLERANCE and _spread(c) <= self.spread:
                self._missed(prop, achieved)
        return [(t.cand, t.keeps) for t in self.timed]

    def _rank(self, prop: Proposal) -> tuple[int, float]:
        """Predicted in the band first, then predicted to reach the target, then the rest; by estimated KD loss."""
        band, pred = self.p.search.band, prop.cand.predicted or 0.0
        tier = 0 if band.contains(pred) else 1 if pred >= band.lo else 2
        return tier, prop.cand.est_kd if prop.cand.est_kd is not None else float("inf")

    def _time(self, prop: Proposal) -> float:
        """Export and time ``prop`` against the dense model; refit the pricing to it."""
        p, c = self.p, prop.cand
        assert prop.model is not None
        measured = p.measure.measure(c, copy.deepcopy(prop.model).cpu().eval())
        prop.model = None  # timed: only its record is needed now
        achieved = p.search.achieved(c)
        c.in_band = p.search.band.contains(achieved)
        noisy = measured is not None and _spread(c) > self.spread
        if measured is not None and c.predicted:
            c.prediction_error = round(achieved / c.predicted - 1, 4)
        if measured is not None and not noisy:  # a noisy timing would only bend the fit: the Newton step uses it
            p.pricing.observe(prop.shapes, achieved)
        self.timed.append(prop)
        off = "" if c.prediction_error is None else f" ({c.prediction_error:+.1%})"
        off += ", too noisy to judge the prediction" if noisy else ""
        where = "in the band" if c.in_band else "outside the band"
        self.p.say(
            f"timed {len(self.timed)}: {c.label}: measured {achieved:.3f}x (pairs {c.spread}), predicted "
            f"{c.predicted}x{off}, {where}; {len(self.pending)} candidate(s) not timed, "
            f"{max(self.want - self.confirmed - c.in_band, 0)} more wanted in the band"
        )
        return achieved

    def _missed(self, prop: Proposal, achieved: float) -> None:
        c = prop.cand
        self.p.say(
            f"the latency table predicted {c.predicted}x for {c.label} and {achieved:.3f}x was measured, more than "
            f"{TOLERANCE:.0%} off: its correction is refitted, the candidates not yet timed are re-priced, and one "
            "more is timed"
        )
        self.want += 1
        self.pending = [q.option.repriced(q) for q in self.pending]


def _spread(c: Candidate) -> float:
    """How far apart the candidate's timed pairs are, relative to its speedup (0 when not timed)."""
    if not c.spread or not c.speedup:
        return 0.0
    return (c.spread[1] - c.spread[0]) / c.speedup


def _copy_grads(src: nn.Module, dst: nn.Module) -> None:
    """deepcopy drops ``.grad``; the copies need them (Taylor costs, taylor importance): copy by name."""
    grads = {n: p.grad for n, p in src.named_parameters()}
    for n, p in dst.named_parameters():
        g = grads.get(n)
        p.grad = None if g is None or g.shape != p.shape else g.clone()
