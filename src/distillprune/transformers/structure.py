"""The encoder family's structure: attention heads, FFN neurons and whole layers, cut for
:class:`~distillprune.prune.session.PruneSession` (``distillprune.prune_`` with a ``TransformerPruneConfig``,
or the ``prune_transformer`` stage).

* ``distill_config``: the task's KD loss when the config names none (``embedding`` for embedders, ``kd``
  for classifiers).
* ``plan``: with a ``target``, the layers to drop and the heads / FFN ratios from measured candidates
  (``transformers.plan``: the encoder's hooks on the one target search, ``prune.search``).
* ``cut(k)``: on the first step drop the layers whose skipping raises the KD loss least; then score heads
  and FFN neurons (Fisher mask importance) and remove them down to step k's share (linear schedule).
* ``settle(k)``: with ``recovery.enabled``, re-fit the projections that lost inputs to the dense outputs by
  least squares (``transformers.recover``).
* ``finish``: a :class:`TransformerPruneReport`.

Every change is a history op (``prune_heads``, ``prune_ffn``, ``drop_layers``) and the HF config follows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.batch import Batch, is_embedder
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp
from distillprune.core.progress import note
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle, Examples
from distillprune.distill.config import DistillConfig, LossSpec
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.api import prune_
from distillprune.prune.structure import Session, Structure, structure_for_config
from distillprune.train.config import RuntimeConfig, TrainSummary
from distillprune.train.context import Context, LoaderOptions, fit_trainer
from distillprune.transformers.config import TransformerPruneConfig
from distillprune.transformers.importance import choose_layers, fisher_scores
from distillprune.transformers.plan import TransformerPlan, plan_encoder
from distillprune.transformers.recover import EncoderRecoveryReport, recover_encoder
from distillprune.transformers.surgery import (
    DropLayersOp,
    HeadsOp,
    NeuronsOp,
    apply_heads,
    apply_neurons,
    drop_layers,
    heads,
    layers,
    neurons,
)


@details_type
@dataclass
class TransformerPruneReport(Details):
    """What transformer pruning did: layers dropped (original indices), heads and FFN neurons per layer."""

    kind = "prune_transformer"
    steps: int
    dropped_layers: list[int] = field(default_factory=list)
    heads_before: list[int] = field(default_factory=list)
    heads_after: list[int] = field(default_factory=list)
    ffn_before: list[int] = field(default_factory=list)
    ffn_after: list[int] = field(default_factory=list)
    plan: TransformerPlan | None = None
    training: TrainSummary | None = None
    recovery: list[EncoderRecoveryReport] = field(default_factory=list)  # one per step that cut heads / FFN
    log: list[str] = field(default_factory=list)  # what the target search decided, step by step

    def __post_init__(self) -> None:
        self.history: list[HistoryOp] = []


def default_losses(cfg: TransformerPruneConfig, model: nn.Module) -> DistillConfig | None:
    """The config's KD options, with the task's loss when the recipe names none (embedders: ``embedding``)."""
    d = cfg.distill
    if d is None or "losses" in d.model_fields_set or not is_embedder(model):
        return d
    return d.model_copy(update={"losses": [LossSpec(name="embedding")]})


@structure_for_config(TransformerPruneConfig)
class EncoderStructure(Structure):
    """Heads, FFN neurons and layers of a Hugging Face encoder (named inputs)."""

    plan_type = TransformerPlan

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        cfg: TransformerPruneConfig = session.cfg
        model = session.model
        self.cfg = cfg
        self.heads_ratio = cfg.heads.ratio if cfg.heads else None
        self.ffn_ratio = cfg.ffn.ratio if cfg.ffn else None
        self.drop = cfg.layers.drop if cfg.layers else 0
        self._report = TransformerPruneReport(cfg.steps, heads_before=heads(model), ffn_before=neurons(model))
        self._base: tuple[list[int], list[int]] | None = None

    @classmethod
    def check(cls, model: nn.Module, cfg: BaseModel, data: DataBundle | None) -> None:
        if data is None:
            raise DistillpruneError("transformer pruning scores heads, neurons and layers on data: pass data=...")
        layers(model)  # one clear line when the model is not an encoder

    @property
    def report(self) -> TransformerPruneReport:
        return self._report

    def distill_config(self) -> DistillConfig | None:
        return default_losses(self.cfg, self.session.model)

    # -- the protocol --------------------------------------------------------------------------------------
    def plan(self) -> TransformerPlan | None:
        t, s = self.cfg.target, self.session
        if t is None:
            return None
        round_to = self.cfg.ffn.round_to if self.cfg.ffn else 64
        return plan_encoder(s.model, s.input_shape, t, s.latency, round_to, self.log)

    def use_plan(self, plan: TransformerPlan | None) -> None:
        if plan is None:
            return
        self._report.plan = plan
        self.drop = plan.layers_dropped
        self.heads_ratio = plan.heads_ratio or None
        self.ffn_ratio = plan.ffn_ratio or None

    def cut(self, k: int) -> None:
        batches = self.calibration()
        if k == 0 and self.drop:
            self._drop_layers(batches)
        model = self.session.model
        if self._base is None:
            self._base = (heads(model), neurons(model))
        share = (k + 1) / self.cfg.steps
        if self.heads_ratio or self.ffn_ratio:
            head_scores, ffn_scores = fisher_scores(model, batches, self.session.seed + k)
            if self.heads_ratio:
                self._prune_heads(head_scores, self.heads_ratio * share)
            if self.ffn_ratio:
                self._prune_ffn(ffn_scores, self.ffn_ratio * share)

    def settle(self, k: int) -> None:
        """With ``recovery.enabled``, re-fit the projections that lost inputs to the dense outputs
        (``transformers.recover``). On every rank, from the same seeded calibration batches, so the ranks
        keep equal weights (the cut itself is rank 0's and replayed)."""
        if self.cfg.recovery.enabled and (self.heads_ratio or self.ffn_ratio):
            s = self.session
            assert s.teacher is not None
            self._report.recovery.append(recover_encoder(s.model, s.teacher, self.calibration(), self.cfg.recovery))

    def finish(self) -> TransformerPruneReport:
        model = self.session.model
        self._report.heads_after, self._report.ffn_after = heads(model), neurons(model)
        return self._report

    # -- pieces ----------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A target-search decision: in the report, and as it happens on stdout and in ``run.log``
        (``core.progress.note``)."""
        self._report.log.append(message)
        note(message)

    def calibration(self) -> list[Batch]:
        return [x for x, _ in self.session.calibration(self.cfg.calib_batches)]

    def _drop_layers(self, batches: list[Batch]) -> None:
        s = self.session
        assert s.teacher is not None
        n = len(layers(s.model))
        if self.drop >= n:
            raise DistillpruneError(f"layers.drop={self.drop} but the encoder has {n} layers")
        chosen = choose_layers(s.model, s.teacher, batches, self.drop)
        origins = [getattr(layers(s.model)[i], "dp_origin", i) for i in chosen]
        drop_layers(s.model, chosen)
        s.record(DropLayersOp(chosen))
        self._report.dropped_layers += origins

    def _prune_heads(self, scores: list[torch.Tensor], ratio: float) -> None:
        assert self.cfg.heads is not None or self.cfg.target is not None
        model, hc = self.session.model, self.cfg.heads
        minimum = hc.min_per_layer if hc else 1
        base = self._base[0] if self._base else heads(model)
        current = heads(model)
        if hc is None or hc.global_ranking:
            plan = _global_heads(scores, base, current, minimum, ratio)
        else:
            plan = {}
            for li, (b, c) in enumerate(zip(base, current, strict=True)):
                k = max(minimum, round(b * (1 - ratio)))
                if k < c:
                    order = torch.argsort(scores[li], descending=True)[:k]
                    plan[li] = sorted(int(i) for i in order)
        for li, keep in sorted(plan.items()):
            apply_heads(model, li, keep)
            self.session.record(HeadsOp(li, keep))

    def _prune_ffn(self, scores: list[torch.Tensor], ratio: float) -> None:
        model, fc = self.session.model, self.cfg.ffn
        round_to = fc.round_to if fc else 64
        base = self._base[1] if self._base else neurons(model)
        current = neurons(model)
        if fc is not None and fc.global_ranking:
            flat = torch.cat([s.flatten() for s in scores])
            keep_total = max(1, round(sum(base) * (1 - ratio)))
            threshold = torch.sort(flat, descending=True).values[min(keep_total, len(flat)) - 1]
            wanted = [int((s >= threshold).sum()) for s in scores]
        else:
            wanted = [round(b * (1 - ratio)) for b in base]
        for li, (w, c) in enumerate(zip(wanted, current, strict=True)):
            k = min(c, max(round_to, int(w / round_to + 0.5) * round_to))
            if k < c:
                keep = sorted(int(i) for i in torch.argsort(scores[li], descending=True)[:k])
                apply_neurons(model, li, keep)
                self.session.record(NeuronsOp(li, keep))


def _global_heads(
    scores: list[torch.Tensor], base: list[int], current: list[int], minimum: int, ratio: float
) -> dict[int, list[int]]:
    """Heads kept per layer when ranked across layers: the lowest-scored go first, every layer keeps
    ``minimum``, until ``ratio`` of the base count is gone."""
    keep_total = max(minimum * len(current), round(sum(base) * (1 - ratio)))
    remove = sum(current) - keep_total
    ranked = sorted((float(s), li, h) for li, sc in enumerate(scores) for h, s in enumerate(sc))
    counts = list(current)
    gone: dict[int, set[int]] = {}
    for _s, li, h in ranked:
        if remove <= 0:
            break
        if counts[li] > minimum:
            gone.setdefault(li, set()).add(h)
            counts[li] -= 1
            remove -= 1
    return {li: [h for h in range(current[li]) if h not in g] for li, g in gone.items()}


def prune_transformer_(
    model: nn.Module,
    cfg: TransformerPruneConfig | dict[str, Any],
    example_inputs: Any = None,
    num_classes: int | None = None,
    *,
    data: DataBundle | None = None,
    teacher: nn.Module | None = None,
    spec: ArchSpec | None = None,
    runtime: RuntimeConfig | None = None,
    latency: LatencyConfig | None = None,
    batch_size: int = 32,
    seed: int = 0,
    train_seed: int | None = None,
) -> TransformerPruneReport:
    """Deprecated: ``distillprune.prune_(model, cfg, data=...)`` prunes an encoder for a
    ``TransformerPruneConfig`` (or its dict); this alias forwards to it."""
    warnings.warn(
        "prune_transformer_ is deprecated: call distillprune.prune_(model, cfg, data=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    where = "transformer prune config"
    conf = cfg if isinstance(cfg, TransformerPruneConfig) else validate(TransformerPruneConfig, cfg, where=where)
    rt = runtime or RuntimeConfig(progress=False, tensorboard=False)
    ctx = Context(rt, LoaderOptions(batch_size, seed), latency)
    trainer = None
    if data is not None and conf.epochs_per_step and train_seed is not None:
        trainer = fit_trainer(conf, data, Context(rt, LoaderOptions(batch_size, train_seed), latency), desc="prune")
    report = prune_(
        model,
        conf,
        data if data is not None else Examples(example_inputs, num_classes),
        teacher=teacher,
        trainer=trainer,
        history=spec,
        context=ctx,
    )
    assert isinstance(report, TransformerPruneReport)  # the structure of a TransformerPruneConfig
    return report
