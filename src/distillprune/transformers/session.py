"""Prune an encoder while distilling: ``TransformerPruneSession`` (prepare -> step x steps -> finish) and the
verb ``prune_transformer_`` (also what ``distillprune.prune_`` runs for a ``TransformerPruneConfig``).

* ``prepare``: the teacher (the unpruned model unless one is given), the objective (KD from the teacher:
  the ``embedding`` loss for embedders, ``kd`` for classifiers, unless the config names losses) and, with a
  ``target``, the plan (layers to drop, heads / FFN ratios) from measured candidates.
* ``step(k)``: on the first step drop the layers whose skipping raises the KD loss least; then score heads
  and FFN neurons (Fisher mask importance) and remove them down to step k's share (linear schedule),
  with ``recovery.enabled`` re-fit the projections that lost inputs to the dense outputs
  (``transformers.recover``); then train
  ``epochs_per_step`` epochs with the objective.
* ``finish``: a :class:`TransformerPruneReport`.

Every change is a history op (``prune_heads``, ``prune_ffn``, ``drop_layers``) and the HF config follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distillprune.core.batch import Batch
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle, TensorLoader
from distillprune.distill.config import LossSpec
from distillprune.distill.distiller import snapshot
from distillprune.distill.modes import Objective, objective_for
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.session import Trainer
from distillprune.train.config import RuntimeConfig, TrainSummary
from distillprune.transformers.config import TransformerPruneConfig
from distillprune.transformers.importance import choose_layers, fisher_scores
from distillprune.transformers.recover import EncoderRecoveryReport, recover_encoder
from distillprune.transformers.search import TransformerPlan, search
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

    def __post_init__(self) -> None:
        self.history: list[HistoryOp] = []


def default_losses(cfg: TransformerPruneConfig, model: nn.Module) -> TransformerPruneConfig:
    """The config with the task's KD loss when the recipe names none (embedders: ``embedding``)."""
    d = cfg.distill
    if d is None or "losses" in d.model_fields_set or getattr(model, "output_kind", "") != "embedding":
        return cfg
    return cfg.model_copy(update={"distill": d.model_copy(update={"losses": [LossSpec(name="embedding")]})})


class TransformerPruneSession:
    def __init__(
        self,
        model: nn.Module,
        cfg: TransformerPruneConfig,
        *,
        data: DataBundle,
        teacher: nn.Module | None = None,
        history: list[HistoryOp] | None = None,
        trainer: Trainer | None = None,
        latency: LatencyConfig | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        seed: int = 0,
    ):
        if cfg.epochs_per_step and trainer is None:
            raise DistillpruneError("epochs_per_step > 0 needs a trainer (pass data to prune_)")
        layers(model)  # one clear line when the model is not an encoder
        self.model, self.cfg, self.data = model, default_losses(cfg, model), data
        self.teacher_given, self.trainer, self.latency = teacher, trainer, latency
        self.history = history if history is not None else []
        self.device, self.batch_size, self.seed = torch.device(device), batch_size, seed
        self.teacher: nn.Module | None = None
        self.objective: Objective | None = None
        self.heads_ratio = cfg.heads.ratio if cfg.heads else None
        self.ffn_ratio = cfg.ffn.ratio if cfg.ffn else None
        self.drop = cfg.layers.drop if cfg.layers else 0
        self.report = TransformerPruneReport(cfg.steps, heads_before=heads(model), ffn_before=neurons(model))
        self._records: list[dict] = []
        self._base: tuple[list[int], list[int]] | None = None
        self._done = 0

    def prepare(self) -> TransformerPlan | None:
        self.model.to(self.device).eval()
        teacher = self.teacher_given if self.teacher_given is not None else snapshot(self.model)
        self.teacher = teacher.to(self.device)
        self.objective = objective_for(self.cfg.distill, self.cfg.label_smoothing, lambda: teacher)
        t = self.cfg.target
        if t is not None:
            round_to = self.cfg.ffn.round_to if self.cfg.ffn else 64
            plan = search(self.model, tuple(self.data.input_shape), t, self.latency, round_to)
            self.report.plan = plan
            self.drop = plan.layers_dropped
            self.heads_ratio = plan.heads_ratio or None
            self.ffn_ratio = plan.ffn_ratio or None
        return self.report.plan

    def calibration(self) -> list[Batch]:
        d = self.data
        loader = TensorLoader(
            d.train, self.batch_size, d.mean, d.std, shuffle=True, seed=self.seed + 1, device=self.device
        )
        return [x for (x, _), _ in zip(loader, range(self.cfg.calib_batches), strict=False)]

    def step(self, k: int) -> None:
        if self.objective is None:
            raise DistillpruneError("TransformerPruneSession.step() before prepare()")
        if k != self._done:
            raise DistillpruneError(f"TransformerPruneSession.step({k}): the next step is {self._done}")
        batches = self.calibration()
        if k == 0 and self.drop:
            self._drop_layers(batches)
        if self._base is None:
            self._base = (heads(self.model), neurons(self.model))
        share = (k + 1) / self.cfg.steps
        if self.heads_ratio or self.ffn_ratio:
            head_scores, ffn_scores = fisher_scores(self.model, batches, self.seed + k)
            if self.heads_ratio:
                self._prune_heads(head_scores, self.heads_ratio * share)
            if self.ffn_ratio:
                self._prune_ffn(ffn_scores, self.ffn_ratio * share)
            if self.cfg.recovery.enabled:  # the projections that lost inputs, re-fitted to the dense outputs
                assert self.teacher is not None
                self.report.recovery.append(recover_encoder(self.model, self.teacher, batches, self.cfg.recovery))
        if self.cfg.epochs_per_step:
            assert self.trainer is not None
            self._records += self.trainer(self.model, self.objective, self.cfg.epochs_per_step, f"step{k + 1}", None)
        self._done += 1

    def finish(self) -> TransformerPruneReport:
        self.report.heads_after, self.report.ffn_after = heads(self.model), neurons(self.model)
        self.report.training = TrainSummary.of(self._records)
        self.model.eval()
        return self.report

    def run(self) -> TransformerPruneReport:
        self.prepare()
        for k in range(self.cfg.steps):
            self.step(k)
        return self.finish()

    # -- pieces ----------------------------------------------------------------------------------------
    def _record(self, op: HistoryOp) -> None:
        self.history.append(op)
        self.report.history.append(op)

    def _drop_layers(self, batches: list[Batch]) -> None:
        assert self.teacher is not None
        n = len(layers(self.model))
        if self.drop >= n:
            raise DistillpruneError(f"layers.drop={self.drop} but the encoder has {n} layers")
        chosen = choose_layers(self.model, self.teacher, batches, self.drop)
        origins = [getattr(layers(self.model)[i], "dp_origin", i) for i in chosen]
        drop_layers(self.model, chosen)
        self._record(DropLayersOp(chosen))
        self.report.dropped_layers += origins

    def _prune_heads(self, scores: list[torch.Tensor], ratio: float) -> None:
        assert self.cfg.heads is not None or self.cfg.target is not None
        hc = self.cfg.heads
        minimum = hc.min_per_layer if hc else 1
        base = self._base[0] if self._base else heads(self.model)
        current = heads(self.model)
        if hc is None or hc.global_ranking:
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
            plan = {li: [h for h in range(current[li]) if h not in g] for li, g in gone.items()}
        else:
            plan = {}
            for li, (b, c) in enumerate(zip(base, current, strict=True)):
                k = max(minimum, round(b * (1 - ratio)))
                if k < c:
                    order = torch.argsort(scores[li], descending=True)[:k]
                    plan[li] = sorted(int(i) for i in order)
        for li, keep in sorted(plan.items()):
            apply_heads(self.model, li, keep)
            self._record(HeadsOp(li, keep))

    def _prune_ffn(self, scores: list[torch.Tensor], ratio: float) -> None:
        fc = self.cfg.ffn
        round_to = fc.round_to if fc else 64
        base = self._base[1] if self._base else neurons(self.model)
        current = neurons(self.model)
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
                apply_neurons(self.model, li, keep)
                self._record(NeuronsOp(li, keep))


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
    **_: Any,
) -> TransformerPruneReport:
    """Prune an encoder's heads, FFN neurons and layers in place while distilling (see the module doc).

    ``cfg``: a TransformerPruneConfig or its dict (``{"heads": {"ratio": 0.25}, "ffn": {"ratio": 0.5},
    "layers": {"drop": 2}, "steps": 2, "epochs_per_step": 1}``); ``data`` gives the calibration batches and the
    training data between steps; ``spec`` (if given) receives the history ops.
    """
    from distillprune.prune.api import fit_trainer
    from distillprune.train.trainer import resolve_device

    cfg = (
        cfg
        if isinstance(cfg, TransformerPruneConfig)
        else validate(TransformerPruneConfig, cfg, where="transformer prune config")
    )
    if data is None:
        raise DistillpruneError("transformer pruning scores heads, neurons and layers on data: pass data=...")
    runtime = runtime or RuntimeConfig(progress=False, tensorboard=False)
    trainer = None
    if cfg.epochs_per_step:
        trainer = fit_trainer(
            cfg,  # type: ignore[arg-type]
            data,
            runtime,
            seed if train_seed is None else train_seed,
            batch_size,
        )
    session = TransformerPruneSession(
        model,
        cfg,
        data=data,
        teacher=teacher,
        history=spec.history if spec is not None else None,
        trainer=trainer,
        latency=latency,
        device=resolve_device(runtime),
        batch_size=batch_size,
        seed=seed,
    )
    return session.run()
