"""Low-rank factorization by truncated SVD.

``W ≈ U_r S_r V_r^T`` (Denton et al. 2014; Jaderberg et al. 2014): a Linear (out x in) becomes
``Linear(in, r) -> Linear(r, out)``; a k x k Conv2d (cout x cin·k·k) becomes a k x k conv with r
filters followed by a 1 x 1 conv (r -> cout). sqrt(S) goes to each factor. The factorized layer
is an ``nn.Sequential`` at the same name, so the replayable history op
``LowRankOp(layer, rank)`` rebuilds it. A layer is skipped, with the reason,
when the rounded rank would not save at least ``min_saving`` of its MACs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from distillprune.core.checkpoint import ArchSpec, history_list
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp, history_op
from distillprune.core.modules import first_match, get_module, set_module
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle, Examples
from distillprune.distill.modes import finetune_objective
from distillprune.errors import CompressionError, DistillpruneError
from distillprune.lowrank.config import LowRankConfig
from distillprune.train.config import TrainSummary
from distillprune.train.context import Context
from distillprune.train.trainers import Trainer, fit_trainer


@dataclass
class LayerPlan:
    name: str
    kind: str  # linear | conv
    full_rank: int
    rank: int | None = None
    macs: int = 0
    macs_after: int | None = None
    energy_kept: float | None = None
    skipped: str | None = None  # why it was not factorized

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@contextmanager
def _one_thread() -> Iterator[None]:
    # LAPACK's SVD of these small matrices takes milliseconds on one thread, but can take a second with
    # several threads on a busy machine (threads spinning against each other)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _matrix(m: nn.Linear | nn.Conv2d) -> torch.Tensor:
    return m.weight.detach().float().flatten(1)  # (out, in·k·k)


def _pair(v: tuple[int, ...]) -> tuple[int, int]:
    return v[0], v[1]


def _rule(name: str, cfg: LowRankConfig) -> int | float:
    v = first_match(name, cfg.overrides)
    return v if v is not None else (cfg.energy if cfg.rank_by == "energy" else cfg.ratio)


def choose_rank(s: torch.Tensor, rule: int | float, rank_by: str, round_to: int) -> int:
    """Rank from singular values ``s``: a fixed int, or by kept energy / ratio; rounded up to ``round_to``."""
    full = len(s)
    if isinstance(rule, int):
        r = rule
    elif rank_by == "energy":
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-30)
        r = int(torch.searchsorted(e, torch.tensor(rule, dtype=torch.float64) - 1e-12)) + 1
    else:
        r = math.ceil(rule * full)
    return min(full, max(round_to, math.ceil(r / round_to) * round_to))


def factor_macs(m: nn.Linear | nn.Conv2d, rank: int, pixels: int) -> tuple[int, int]:
    """(MACs before, MACs after) for one sample; ``pixels`` = output positions of a conv (1 for Linear)."""
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features, rank * (m.in_features + m.out_features)
    k = m.kernel_size[0] * m.kernel_size[1]
    return pixels * m.in_channels * m.out_channels * k, pixels * rank * (m.in_channels * k + m.out_channels)


@torch.no_grad()
def _pixels(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(
                m.register_forward_hook(
                    lambda _m, _i, o, name=name: out.__setitem__(name, int(o.shape[-1] * o.shape[-2]))
                )
            )
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return out


def plan(model: nn.Module, input_shape: tuple[int, ...], cfg: LowRankConfig) -> list[LayerPlan]:
    """One LayerPlan per candidate layer: the rank it gets, or why it is skipped."""
    pixels = _pixels(model, input_shape)
    plans = []
    for name, m in cfg.layers.select(model, (nn.Linear, nn.Conv2d)).items():
        assert isinstance(m, (nn.Linear, nn.Conv2d))  # what select was asked for
        kind = "linear" if isinstance(m, nn.Linear) else "conv"
        w = _matrix(m)
        p = LayerPlan(name, kind, min(w.shape))
        if kind == "conv" and m.groups != 1:
            p.skipped = f"grouped convolution (groups={m.groups}): no SVD factorization"
        elif kind == "conv" and name not in pixels:
            p.skipped = "not used in the forward pass"
        if p.skipped:
            plans.append(p)
            continue
        with _one_thread():
            s = torch.linalg.svdvals(w.cpu())
        p.rank = choose_rank(s, _rule(name, cfg), cfg.rank_by, cfg.round_to)
        p.energy_kept = round(float((s[: p.rank] ** 2).sum() / (s**2).sum().clamp_min(1e-30)), 4)
        p.macs, p.macs_after = factor_macs(m, p.rank, pixels.get(name, 1))
        if p.rank >= p.full_rank:
            p.skipped = f"rank {p.rank} (rounded to {cfg.round_to}) is the full rank {p.full_rank}"
        elif p.macs_after >= p.macs:
            p.skipped = f"no MAC saving at rank {p.rank} ({p.macs_after} >= {p.macs} MACs)"
        elif p.macs_after > (1 - cfg.min_saving) * p.macs:
            p.skipped = (
                f"saves only {100 * (1 - p.macs_after / p.macs):.0f}% of its MACs at rank {p.rank} "
                f"(min_saving {100 * cfg.min_saving:.0f}%)"
            )
        plans.append(p)
    return plans


def skeleton(m: nn.Module, rank: int) -> nn.Sequential:
    """The two-layer replacement of ``m`` at ``rank`` (weights uninitialised)."""
    if isinstance(m, nn.Linear):
        return nn.Sequential(
            nn.Linear(m.in_features, rank, bias=False),
            nn.Linear(rank, m.out_features, bias=m.bias is not None),
        ).to(m.weight.device, m.weight.dtype)
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return nn.Sequential(
            nn.Conv2d(
                m.in_channels,
                rank,
                _pair(m.kernel_size),
                _pair(m.stride),
                m.padding if isinstance(m.padding, str) else _pair(m.padding),
                _pair(m.dilation),
                bias=False,
                padding_mode=m.padding_mode,
            ),
            nn.Conv2d(rank, m.out_channels, 1, bias=m.bias is not None),
        ).to(m.weight.device, m.weight.dtype)
    raise CompressionError(
        f"lowrank: cannot factorize a {type(m).__name__}"
        + (f" with groups={m.groups}" if isinstance(m, nn.Conv2d) else "")
        + "; supported: Linear and Conv2d (groups=1)"
    )


@torch.no_grad()
def factorize(m: nn.Module, rank: int) -> nn.Sequential:
    """Truncated SVD of ``m`` at ``rank``: the two layers, initialised so their product is the best
    rank-``rank`` approximation of ``m.weight`` (Eckart-Young)."""
    seq = skeleton(m, rank)
    assert isinstance(m, (nn.Linear, nn.Conv2d))  # skeleton refuses every other layer
    first_layer, second_layer = seq[0], seq[1]
    assert isinstance(first_layer, (nn.Linear, nn.Conv2d)) and isinstance(second_layer, (nn.Linear, nn.Conv2d))
    with _one_thread():
        u, s, vh = torch.linalg.svd(_matrix(m).double().cpu(), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).to(m.weight.device, m.weight.dtype)  # (r, in·k·k)
    second = (u[:, :rank] * root[None]).to(m.weight.device, m.weight.dtype)  # (out, r)
    first_layer.weight.copy_(first.view_as(first_layer.weight))
    second_layer.weight.copy_(second.view_as(second_layer.weight))
    if m.bias is not None:
        assert second_layer.bias is not None  # skeleton gives it a bias when m has one
        second_layer.bias.copy_(m.bias)
    return seq


@history_op
@dataclass(frozen=True)
class LowRankOp(HistoryOp):
    """A layer factorized at ``rank`` (its two-layer structure is rebuilt; the weights are loaded after)."""

    op = "lowrank"
    layer: str
    rank: int

    def replay(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        try:
            m = get_module(model, self.layer)
        except DistillpruneError:
            raise CompressionError(f"lowrank history: no layer '{self.layer}' in {type(model).__name__}") from None
        set_module(model, self.layer, skeleton(m, self.rank))


@details_type
@dataclass
class LowRankReport(Details):
    """The layers factorized (rank, kept energy, MACs before and after) and those skipped, with why."""

    kind = "lowrank"
    factorized: list[LayerPlan] = field(default_factory=list)
    skipped: list[LayerPlan] = field(default_factory=list)
    training: TrainSummary | None = None

    @property
    def layer_macs_saved(self) -> int:
        return int(sum(p.macs - (p.macs_after or p.macs) for p in self.factorized))


def apply_plan(model: nn.Module, plans: list[LayerPlan]) -> list[LowRankOp]:
    """Factorize the planned layers in place; returns the history ops."""
    ops = []
    for p in plans:
        if p.skipped or p.rank is None:
            continue
        set_module(model, p.name, factorize(get_module(model, p.name), p.rank))
        ops.append(LowRankOp(p.name, p.rank))
    return ops


def lowrank_(
    model: nn.Module,
    cfg: LowRankConfig | dict[str, Any] | None = None,
    data: DataBundle | Examples | None = None,
    *,
    teacher: nn.Module | None = None,
    trainer: Trainer | None = None,
    history: ArchSpec | list[HistoryOp] | None = None,
    context: Context | None = None,
) -> LowRankReport:
    """Plan and factorize ``model`` in place as the recipe's lowrank stage does, then fine-tune it for
    ``cfg.epochs`` with KD from ``teacher`` (default: a frozen copy of ``model`` before the factorization)
    through ``trainer`` (default ``fit_trainer(cfg, data, context)``). ``data``: a DataBundle, or
    ``Examples(inputs)`` when nothing trains (only its input shape is read). ``history`` (an ArchSpec or its
    ops) receives the replayable ``LowRankOp``s."""
    conf = cfg if isinstance(cfg, LowRankConfig) else validate(LowRankConfig, cfg or {}, where="LowRankConfig")
    if data is None:
        raise CompressionError("lowrank reads the model's input shape: pass data (a DataBundle or Examples(inputs))")
    train, objective = None, None
    if conf.epochs:
        if not isinstance(data, DataBundle):
            raise CompressionError(f"lowrank: epochs={conf.epochs} fine-tunes the model; pass data (a DataBundle)")
        seed = (context or Context()).loader.seed
        objective = finetune_objective(conf.distill, conf.label_smoothing, model, teacher, seed, data)  # before SVD
        train = trainer or fit_trainer(conf, data, context, desc="lowrank")
    explicit = [p for p in conf.layers.include if "*" not in p and "?" not in p and "[" not in p]
    mods = dict(model.named_modules())
    for name in explicit:
        if name not in mods:
            raise CompressionError(f"lowrank: no layer '{name}' in {type(model).__name__}")
        if not isinstance(mods[name], (nn.Linear, nn.Conv2d)):
            raise CompressionError(
                f"lowrank: layer '{name}' is a {type(mods[name]).__name__}; supported: Linear and Conv2d (groups=1)"
            )
    plans = plan(model, tuple(data.input_shape), conf)
    ops = apply_plan(model, plans)
    recorded = history_list(history)
    if recorded is not None:
        recorded.extend(ops)
    report = LowRankReport([p for p in plans if not p.skipped], [p for p in plans if p.skipped])
    if train is not None and objective is not None:  # both are set when the config fine-tunes
        report.training = TrainSummary.of(train(model, objective, conf.epochs, "train"))
    return report
