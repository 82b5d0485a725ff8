"""The encoder family's structure: attention heads, FFN neurons and whole layers, cut for
:class:`~distillprune.prune.session.PruneSession` (``distillprune.prune_`` with a ``TransformerPruneConfig``,
or the ``prune_transformer`` stage).

* ``distill_config``: the task's KD loss when the config names none (``embedding`` for embedders, ``kd``
  for classifiers).
* ``plan``: with a ``target``, the layers to drop and the heads / FFN ratios from measured candidates
  (``transformers.plan``: the encoder's hooks on the one target search, ``prune.search``).
* ``cut(k)``: on the first step drop the layers whose skipping raises the KD loss least (the block scorer,
  ``prune.depth.BlockScorer``); then score heads and FFN neurons (the ``importance`` criterion, Fisher mask
  importance) and cut each layer down to step k's share (``prune.schedule``) through the one cutter
  (``prune.cut.Cutter``: checked, rolled back and named when a cut does not fit the forward).
* ``settle(k)``: with ``recovery`` (``method: lstsq``), re-fit the projections that lost inputs to the dense
  outputs by least squares (``transformers.recover``).
* ``finish``: a :class:`TransformerPruneReport`.

Every change is a history op (``prune_heads``, ``prune_ffn``, ``drop_layers``) and the HF config follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.batch import Batch, call, is_embedder
from distillprune.core.history import HistoryOp
from distillprune.core.progress import note
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle
from distillprune.distill.config import DistillConfig, LossSpec
from distillprune.errors import DistillpruneError
from distillprune.prune.criteria import criterion
from distillprune.prune.cut import Cutter
from distillprune.prune.depth import BlockScorer
from distillprune.prune.schedule import encoder_heads_keep, encoder_neurons_keep
from distillprune.prune.structure import Session, Structure, structure_for_config
from distillprune.train.config import TrainSummary
from distillprune.transformers.config import TransformerPruneConfig
from distillprune.transformers.importance import EncoderGroup, kd_distance
from distillprune.transformers.plan import TransformerPlan, plan_encoder
from distillprune.transformers.recover import EncoderRecoveryReport, recover_encoder
from distillprune.transformers.surgery import (
    DropLayersOp,
    LayerCut,
    drop_layers,
    head_dim,
    heads,
    layers,
    layers_path,
    neurons,
    sync_config,
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
    skipped: list[dict[str, str]] = field(default_factory=list)  # layer cuts the cutter left whole, and why

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
        cfg = session.cfg
        assert isinstance(cfg, TransformerPruneConfig)  # registered for it (and its subclasses)
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
        if not (self.heads_ratio or self.ffn_ratio):
            return
        crit = criterion(self.cfg.importance)
        crit.prepare(model, batches, seed=self.session.seed + k)
        scores = {p: [crit.scores(EncoderGroup(i, p)) for i in range(len(layers(model)))] for p in ("heads", "ffn")}
        share = (k + 1) / self.cfg.steps
        cuts = self._head_cuts(scores["heads"], share) + self._neuron_cuts(scores["ffn"], share)
        example = batches[0][:8] if batches else None
        result = Cutter(model, None, example, onnx=False).cut(cuts)
        sync_config(model)  # (a cut rolled back left the HF config describing it)
        for c in result.cuts:
            self.session.record(c.op())
        self._report.skipped += [g.to_dict() for g in result.skipped]

    def settle(self, k: int) -> None:
        """With ``recovery`` in force, re-fit the projections that lost inputs to the dense outputs
        (``transformers.recover``). On every rank, from the same seeded calibration batches, so the ranks
        keep equal weights (the cut itself is rank 0's and replayed)."""
        recovery = self.cfg.recovery_config()
        if recovery is not None and (self.heads_ratio or self.ffn_ratio):
            s = self.session
            assert s.teacher is not None
            given = "calib_samples" in recovery.model_fields_set  # else the texts the cuts were scored on
            batches = [x for x, _ in s.calibration(recovery.calib_samples if given else self.cfg.calib_samples)]
            self._report.recovery.append(recover_encoder(s.model, s.teacher, batches, recovery))

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
        return [x for x, _ in self.session.calibration(self.cfg.calib_samples)]

    def _drop_layers(self, batches: list[Batch]) -> None:
        """Drop the layers whose skipping raises the KD loss least (lazy-greedy, ``prune.depth.BlockScorer``)."""
        s = self.session
        assert s.teacher is not None
        ls = layers(s.model)
        if self.drop >= len(ls):
            raise DistillpruneError(f"layers.drop={self.drop} but the encoder has {len(ls)} layers")
        embedding = is_embedder(s.model)
        was = s.model.training
        s.model.eval()
        with torch.no_grad():
            targets = [call(s.teacher, x) for x in batches]
            scorer = BlockScorer(
                s.model,
                [str(i) for i in range(len(ls))],
                batches,  # type: ignore[arg-type]  # named inputs: the scorer only calls the model on them
                targets,
                skip=lambda _m, chosen: _skip_layers(ls, chosen),
                distance=lambda o, t: kd_distance(o, t, embedding),
            )
            chosen = sorted(int(i) for i in scorer.greedy(self.drop))
        s.model.train(was)
        origins = [getattr(ls[i], "dp_origin", i) for i in chosen]
        drop_layers(s.model, chosen)
        s.record(DropLayersOp(chosen))
        self._report.dropped_layers += origins

    def _layer_cut(self, i: int, part: str, keep: list[int], total: int) -> LayerCut:
        model = self.session.model
        return LayerCut(i, part, keep, total, head_dim(model), f"{layers_path(model)}.{i}")

    def _head_cuts(self, scores: list[torch.Tensor], share: float) -> list[LayerCut]:
        if not self.heads_ratio:
            return []
        hc, current = self.cfg.heads, heads(self.session.model)
        base = self._base[0] if self._base else current
        ranked = hc is None or hc.global_ranking
        plan = encoder_heads_keep(
            scores, base, current, self.heads_ratio * share, hc.min_per_layer if hc else 1, ranked
        )
        return [self._layer_cut(i, "heads", keep, current[i]) for i, keep in sorted(plan.items())]

    def _neuron_cuts(self, scores: list[torch.Tensor], share: float) -> list[LayerCut]:
        if not self.ffn_ratio:
            return []
        fc, current = self.cfg.ffn, neurons(self.session.model)
        base = self._base[1] if self._base else current
        round_to, ranked = (fc.round_to, fc.global_ranking) if fc else (64, False)
        plan = encoder_neurons_keep(scores, base, current, self.ffn_ratio * share, round_to, ranked)
        return [self._layer_cut(i, "ffn", keep, current[i]) for i, keep in sorted(plan.items())]


class _Skip(nn.Module):
    """A layer that passes its hidden states through (the layer, removed)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return hidden_states


def _skip_layers(ls: nn.ModuleList, chosen: Sequence[str]) -> Callable[[], None]:
    """Replace the layers at ``chosen`` (indices) by pass-throughs; the returned call puts them back."""
    saved = [(int(j), ls[int(j)]) for j in chosen]
    for j, _ in saved:
        ls[j] = _Skip()

    def undo() -> None:
        for j, m in saved:
            ls[j] = m

    return undo
