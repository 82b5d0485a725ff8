"""Target-driven plans for encoders: how many layers to drop and what share of heads / FFN neurons to remove
to reach a *measured* ONNX Runtime speedup (or a MACs ratio); the encoder structure's ``plan``
(``transformers.structure``), beside the CNN's ``prune.planner``.

Candidates are pruned copies scored without training (latency and MACs depend on the shapes only): for each
number of layers dropped (``target.depth_fractions`` of the layers) and each way of spending width (heads
and FFN together, or FFN only), bisect the ratio to the smallest that meets the target, timing the dense
model and the candidate back to back; the plan that keeps the most MACs wins. The session then chooses
*which* layers, heads and neurons by KD loss and Fisher importance.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, ort_latency
from distillprune.measure.metrics import count_macs
from distillprune.transformers.config import TransformerTargetConfig
from distillprune.transformers.surgery import apply_heads, apply_neurons, drop_layers, heads, layers, neurons

MIXES = {"heads+ffn": (1.0, 1.0), "ffn": (0.0, 1.0)}


@dataclass
class TransformerPlan:
    layers_dropped: int
    heads_ratio: float
    ffn_ratio: float
    macs_ratio: float
    speedup: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def shrunk(model: nn.Module, n_drop: int, heads_ratio: float, ffn_ratio: float, round_to: int = 64) -> nn.Module:
    """A copy with the last ``n_drop`` layers dropped and each layer's heads / FFN cut by the ratios."""
    m = copy.deepcopy(model).cpu().eval()
    if n_drop:
        n = len(layers(m))
        drop_layers(m, list(range(n - n_drop, n)))
    for i, (h, f) in enumerate(zip(heads(m), neurons(m), strict=True)):
        kh = max(1, round(h * (1 - heads_ratio)))
        if kh < h:
            apply_heads(m, i, range(kh))
        kf = min(f, max(round_to, int(f * (1 - ffn_ratio) / round_to + 0.5) * round_to))
        if kf < f:
            apply_neurons(m, i, range(kf))
    return m


class _Scorer:
    def __init__(
        self,
        model: nn.Module,
        shape: Sequence[int],
        target: TransformerTargetConfig,
        lat: LatencyConfig,
        rounds: int = 3,
    ):
        self.shape, self.target, self.rounds = tuple(shape), target, rounds
        self.lat = lat.model_copy(
            update={
                "batch_sizes": [target.batch_size],
                "enabled": True,
                "seq_lengths": [_seq_for(lat, target.batch_size)],
            }
        )
        self.base_macs = count_macs(model, shape)
        self.base = onnx_bytes(model, self.shape) if target.latency_speedup else None

    def _ms(self, blob: bytes) -> float:
        return next(iter(ort_latency(blob, self.shape, self.lat).values()))

    def score(self, m: nn.Module) -> tuple[float, float | None, bool]:
        macs = count_macs(m, self.shape)
        mr = self.base_macs / max(macs, 1)
        if self.target.latency_speedup is None:
            return mr, None, mr >= (self.target.macs_ratio or 1.0)
        if macs >= self.base_macs:
            return mr, 1.0, False
        assert self.base is not None
        cand = onnx_bytes(m, self.shape)
        sp = statistics.median(self._ms(self.base) / self._ms(cand) for _ in range(self.rounds))
        return mr, sp, sp >= self.target.latency_speedup


def _seq_for(lat: LatencyConfig, batch: int) -> int:
    """The sequence length the latency config pairs with ``batch`` (its first length when not listed)."""
    if batch in lat.batch_sizes:
        i = lat.batch_sizes.index(batch)
        return lat.seq_lengths[min(i, len(lat.seq_lengths) - 1)]
    return lat.seq_lengths[0]


def search(
    model: nn.Module,
    input_shape: Sequence[int],
    target: TransformerTargetConfig,
    latency: LatencyConfig | None = None,
    round_to: int = 64,
    iters: int = 6,
    mixes: Sequence[str] = ("heads+ffn", "ffn"),
) -> TransformerPlan:
    lat = (latency or LatencyConfig()).model_copy(update={"repeats": 3, "min_window_s": 0.03})
    scorer = _Scorer(model, input_shape, target, lat)
    n_layers = len(layers(model))
    best: TransformerPlan | None = None
    for frac in dict.fromkeys(target.depth_fractions):
        n_drop = min(int(round(frac * n_layers)), n_layers - 1)
        for mix in mixes:
            wh, wf = MIXES[mix]

            def cand(r: float, n_drop: int = n_drop, wh: float = wh, wf: float = wf) -> nn.Module:
                return shrunk(model, n_drop, wh * r, wf * r, round_to)

            hi = target.max_width_ratio
            mr, sp, ok = scorer.score(cand(hi))
            if not ok:
                continue
            found = TransformerPlan(n_drop, wh * hi, wf * hi, mr, sp)
            mr, sp, ok = scorer.score(cand(0.0)) if n_drop else (1.0, 1.0, False)
            lo, steps = 0.0, iters
            if ok:
                found, steps = TransformerPlan(n_drop, 0.0, 0.0, mr, sp), 0
            for _ in range(steps):
                mid = (lo + hi) / 2
                mr, sp, ok = scorer.score(cand(mid))
                if ok:
                    hi, found = mid, TransformerPlan(n_drop, round(wh * mid, 4), round(wf * mid, 4), mr, sp)
                else:
                    lo = mid
            if best is None or found.macs_ratio < best.macs_ratio:
                best = found
    if best is None:
        raise DistillpruneError(
            f"no plan reaches the target {target.model_dump(exclude_none=True)} (ratios up "
            f"to {target.max_width_ratio}, layer fractions {target.depth_fractions}); lower "
            "the target or allow dropping more layers"
        )
    return best
