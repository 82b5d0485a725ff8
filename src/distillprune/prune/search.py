"""Target-driven pruning plans: find how deep and how wide to prune to hit a MACs ratio or a
*measured* ONNX Runtime speedup.

Latency and MACs depend on the architecture only, so candidates are pruned copies scored
without training: for each depth option (blocks removed), bisect the width ratio to the smallest
one meeting the target, then keep the candidate that retains the most MACs (the most capacity).
For the search, blocks are removed from the end of each stage in turn (in CIFAR-style ResNets
every block of a stage costs the same); the prune stage then chooses *which* blocks by KD loss.
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, ort_latency
from distillprune.measure.metrics import count_macs
from distillprune.prune.config import TargetConfig, WidthConfig
from distillprune.prune.depth import removable_blocks, remove_block
from distillprune.prune.structured import prune_step, width_pruner


@dataclass
class Plan:
    blocks: int
    width_ratio: float
    macs_ratio: float
    speedup: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _spread(model: nn.Module, count: int) -> list[str]:
    """``count`` removable blocks taken from the end of each stage in turn."""
    stages: dict[str, list[str]] = {}
    for p in removable_blocks(model):
        stages.setdefault(p.rsplit(".", 1)[0], []).append(p)
    order, queues = [], [list(reversed(v)) for v in stages.values()]
    while len(order) < count and any(queues):
        for q in queues:
            if q and len(order) < count:
                order.append(q.pop(0))
    return order


def _candidate(model: nn.Module, shape: Sequence[int], classes: int, blocks: int, ratio: float,
               width: WidthConfig) -> nn.Module:
    m = copy.deepcopy(model).cpu().eval()
    for p in _spread(m, blocks):
        remove_block(m, p)
    if ratio > 0:
        cfg = width.model_copy(update={"ratio": ratio, "importance": "l1"})
        prune_step(width_pruner(m, torch.zeros(1, *shape), cfg, classes))
    return m


class _Scorer:
    """MACs ratio and, for a latency target, the measured ORT speedup of a candidate over the baseline.

    The speedup is the median of ``rounds`` ratios, each timing the baseline and the candidate back to
    back: a baseline timed once at the start drifts with the machine's load (on a busy 2-core machine
    an unpruned copy measured 1.2x "faster" than itself). A candidate that removed nothing is the
    baseline network: its speedup is 1 without timing."""

    def __init__(self, model: nn.Module, shape: Sequence[int], target: TargetConfig, lat: LatencyConfig,
                 rounds: int = 3):
        self.shape, self.target, self.rounds = tuple(shape), target, rounds
        self.lat = lat.model_copy(update={"batch_sizes": [target.batch_size], "enabled": True})
        self.base_macs = count_macs(model, shape)
        self.base_onnx = onnx_bytes(model, self.shape) if target.latency_speedup else None

    def _ms(self, onnx: bytes) -> float:
        return next(iter(ort_latency(onnx, self.shape, self.lat).values()))

    def _speedup(self, m: nn.Module) -> float:
        assert self.base_onnx is not None
        cand = onnx_bytes(m, self.shape)
        return statistics.median(self._ms(self.base_onnx) / self._ms(cand) for _ in range(self.rounds))

    def score(self, m: nn.Module) -> tuple[float, float | None, bool]:
        macs = count_macs(m, self.shape)
        mr = self.base_macs / max(macs, 1)
        if self.target.latency_speedup is None:
            return mr, None, mr >= self.target.macs_ratio
        sp = 1.0 if macs >= self.base_macs else self._speedup(m)
        return mr, sp, sp >= self.target.latency_speedup


def search(model: nn.Module, input_shape: Sequence[int], num_classes: int, width: WidthConfig,
           target: TargetConfig, latency: LatencyConfig | None = None, iters: int = 8,
           baseline: nn.Module | None = None) -> Plan:
    """The plan that keeps the most MACs while meeting ``target`` relative to ``baseline`` (default:
    ``model``). Pass a depth-pruned ``model`` with its dense ``baseline`` to re-fit the width ratio."""
    lat = (latency or LatencyConfig()).model_copy(update={"repeats": 3, "min_window_s": 0.03})
    scorer = _Scorer(baseline if baseline is not None else model, input_shape, target, lat)
    n_removable = len(removable_blocks(model))
    best: Plan | None = None
    for frac in dict.fromkeys(target.depth_fractions):
        blocks = int(round(frac * n_removable))
        lo, hi = 0.0, target.max_width_ratio
        m = _candidate(model, input_shape, num_classes, blocks, hi, width)
        mr, sp, ok = scorer.score(m)
        if not ok:
            continue  # even the narrowest candidate at this depth misses the target
        found = Plan(blocks, hi, mr, sp)
        m = _candidate(model, input_shape, num_classes, blocks, 0.0, width)
        mr, sp, ok = scorer.score(m)
        if ok:
            found, iters_left = Plan(blocks, 0.0, mr, sp), 0
        else:
            iters_left = iters
        for _ in range(iters_left):
            mid = (lo + hi) / 2
            mr, sp, ok = scorer.score(_candidate(model, input_shape, num_classes, blocks, mid, width))
            if ok:
                hi, found = mid, Plan(blocks, round(mid, 4), mr, sp)
            else:
                lo = mid
        if best is None or found.macs_ratio < best.macs_ratio:
            best = found
    if best is None:
        raise DistillpruneError(f"no plan reaches the target {target.model_dump(exclude_none=True)} "
                                f"(width ratio up to {target.max_width_ratio}, depth fractions "
                                f"{target.depth_fractions}); lower the target or allow more depth")
    return best
