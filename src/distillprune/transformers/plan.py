"""The encoder family's hooks on the one target search (``prune.search``): what an encoder can cut for a
measured ONNX Runtime speedup (or a MACs ratio), and the plan the encoder structure follows.

An option is a number of layers dropped (``target.depth_fractions`` of the layers) and a way of spending
width (``MIXES``: heads and FFN together, or FFN only) at one ratio. Candidates are pruned copies measured
without training (latency and MACs depend on the shapes only), each against the dense model (paired ORT
timing, or the MACs ratio); the ratio is bisected until a candidate lands in the band
``[target, target * (1 + tolerance)]``. The plan is the offer that keeps the most MACs. The session then
chooses *which* layers, heads and neurons by KD loss and Fisher importance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from distillprune.measure.latency import LatencyConfig
from distillprune.prune.search import Band, Baseline, Candidate, Option, Search, measure_for
from distillprune.transformers.config import TransformerTargetConfig
from distillprune.transformers.surgery import apply_heads, apply_neurons, drop_layers, heads, layers, neurons

#: ways of spending width: (share of the ratio applied to heads, to FFN neurons)
MIXES = {"heads+ffn": (1.0, 1.0), "ffn": (0.0, 1.0)}
BISECTIONS = 6  # ratio bisection steps per option after its ends


@dataclass
class TransformerPlan:
    """Layers to drop, the heads and FFN ratios, and the search that chose them."""

    layers_dropped: int
    heads_ratio: float
    ffn_ratio: float
    macs_ratio: float
    speedup: float | None
    achieved: float | None = None  # the measured speedup (latency target) or the MACs ratio (MACs target)
    target: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    note: str | None = None

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


class _Width(Option):
    """One encoder option: the last ``n_drop`` layers dropped, heads / FFN cut by one ratio spent as ``mix``.
    The widest cut first (if it misses the target, nothing in this option reaches it), then the layers alone
    (when some are dropped), then the ratio bisected between the slowest and fastest measured so far."""

    def __init__(self, model: nn.Module, n_drop: int, mix: str, max_ratio: float, band: Band, round_to: int):
        self.model, self.depth, self.mix, self.band, self.round_to = model, n_drop, mix, band, round_to
        self.max = max_ratio
        self.lo, self.hi, self.ratio, self.bisections = 0.0, max_ratio, max_ratio, 0

    def label(self, attempt: int) -> str:
        return f"{self.depth} layers dropped, {self.mix} {self.ratio:.4g}"

    def first(self) -> float:
        return self.max

    def build(self, ratio: float) -> tuple[nn.Module, tuple[int, float, float]]:
        self.ratio = ratio
        wh, wf = MIXES[self.mix]
        m = shrunk(self.model, self.depth, wh * ratio, wf * ratio, self.round_to)
        return m, (self.depth, round(wh * ratio, 4), round(wf * ratio, 4))

    def next(self, ratio: float, cand: Candidate, achieved: float) -> float | None:
        if achieved < self.band.lo:
            self.lo = ratio  # too slow: cut more
        else:
            self.hi = ratio  # past the band: give width back
        if self.lo >= self.max:
            return None  # the widest cut misses the target
        if self.hi <= 0.0:
            return None  # the layers alone overshoot: no width to give back
        if ratio == self.max and self.depth:
            return 0.0
        if self.bisections == BISECTIONS:
            return None
        self.bisections += 1
        return (self.lo + self.hi) / 2


def plan_encoder(
    model: nn.Module,
    input_shape: Sequence[int],
    target: TransformerTargetConfig,
    latency: LatencyConfig | None = None,
    round_to: int = 64,
    log: Callable[[str], None] = lambda s: None,
) -> TransformerPlan:
    """The plan that reaches ``target`` (see the module docstring); ``model`` is unchanged."""
    baseline = Baseline.of(model, tuple(input_shape))
    goal = float(target.latency_speedup or target.macs_ratio)  # type: ignore[arg-type]
    search = Search(Band(goal, target.tolerance), measure_for(target, baseline, _paired(latency, target)), log)
    n_layers = len(layers(model))
    offers = []
    for n_drop in dict.fromkeys(min(int(round(f * n_layers)), n_layers - 1) for f in target.depth_fractions):
        for mix in MIXES:
            option = _Width(baseline.model, n_drop, mix, target.max_width_ratio, search.band, round_to)
            offers.append(search.offer(option))
    hint = (
        f"(heads/FFN ratios up to {target.max_width_ratio}, layer fractions {target.depth_fractions}); "
        "lower the target or allow dropping more layers (target.depth_fractions)"
    )
    # the offer that keeps the most MACs: the session chooses the layers, heads and neurons by their scores
    (best, (n_drop, hr, fr)), note = search.choose(offers, lambda c: c.macs_ratio or 0.0, hint)
    keys = ("latency_speedup", "macs_ratio", "batch_size")
    return TransformerPlan(
        n_drop,
        hr,
        fr,
        best.macs_ratio or 1.0,
        best.speedup,
        search.achieved(best),
        {k: v for k, v in target.model_dump().items() if k in keys and v is not None},
        search.candidates,
        note,
    )


def _paired(latency: LatencyConfig | None, target: TransformerTargetConfig) -> LatencyConfig:
    """The session's latency options, timing text at the sequence length they pair with the target's batch (the
    first length when that batch is not listed)."""
    lat = latency or LatencyConfig()
    if target.batch_size in lat.batch_sizes:
        i = lat.batch_sizes.index(target.batch_size)
        seq = lat.seq_lengths[min(i, len(lat.seq_lengths) - 1)]
    else:
        seq = lat.seq_lengths[0]
    return lat.model_copy(update={"batch_sizes": [target.batch_size], "seq_lengths": [seq]})
