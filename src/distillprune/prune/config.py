"""Pruning options: the ``prune`` stage of a recipe and ``distillprune.prune_`` take the same PruneConfig; the
session's share of it (``SessionConfig``) is what every family's config extends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from distillprune.core.config import StrictModel
from distillprune.core.modules import LayerSelect
from distillprune.distill.config import DistillConfig
from distillprune.prune.criteria import check_family
from distillprune.prune.recovery.config import RecoveryConfig
from distillprune.ssl.config import SSLOptions
from distillprune.train.config import TrainingOptions

if TYPE_CHECKING:
    ImportanceName = str
else:  # a registered criterion that scores a CNN's channel and head groups
    ImportanceName = Annotated[str, AfterValidator(lambda n: check_family(n, "cnn", "width.importance"))]


class WidthConfig(StrictModel):
    """Structured channel pruning that physically removes channels (Torch-Pruning dependency graph)."""

    ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of channels removed from each prunable group (searched when the stage has a target)",
    )
    importance: ImportanceName = Field("l2", description="l1 | l2 | taylor | bn_scale")
    global_pruning: bool = Field(False, description="rank all groups together instead of a uniform ratio")
    round_to: int | None = Field(
        8, gt=0, description="round kept channels to the nearest multiple, at least one (hardware-friendly)"
    )
    layers: LayerSelect = Field(
        default_factory=LayerSelect, description="layers that may lose channels (the classifier is always kept)"
    )
    max_ratio: float = Field(0.9, gt=0, le=1, description="never remove more than this share of a layer")
    calib_samples: int = Field(512, gt=0, description="training samples whose gradients score taylor importance")

    @model_validator(mode="after")
    def _within_max(self) -> WidthConfig:
        if self.ratio is not None and self.ratio > self.max_ratio:
            raise ValueError(
                f"ratio {self.ratio} is above max_ratio {self.max_ratio}, the most any layer may "
                "lose; lower ratio or raise max_ratio"
            )
        return self


class DepthConfig(StrictModel):
    """Remove whole residual blocks, chosen by the smallest KD-loss increase when skipped."""

    blocks: int = Field(..., ge=1, description="number of residual blocks to remove")
    calib_samples: int = Field(512, gt=0, description="training samples scoring the blocks (KD loss when skipped)")


class UnstructuredConfig(StrictModel):
    """Magnitude pruning of individual weights with masks; made permanent at the end of the stage."""

    sparsity: float = Field(..., gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"
    schedule: Literal["cubic", "oneshot"] = "cubic"
    layers: LayerSelect = Field(default_factory=LayerSelect, description="layers to sparsify")


class SpeedTarget(StrictModel):
    """What every family's target names: a measured ONNX Runtime speedup or a MACs ratio, the shares of the
    removable depth (blocks, layers) to try removing, and the band the search accepts (``prune.search``). A
    family's target adds only what its planner reads."""

    macs_ratio: float | None = Field(None, gt=1, description="dense MACs / pruned MACs")
    latency_speedup: float | None = Field(None, gt=1, description="measured ORT CPU speedup at batch_size")
    batch_size: int = Field(1, gt=0, description="batch size of the latency target")
    depth_fractions: list[float] = Field(
        default_factory=lambda: [0.0], description="shares of the removable depth to try removing"
    )
    tolerance: float = Field(
        0.1,
        gt=0,
        le=1,
        description="accept a measured speedup in [target, target * (1 + tolerance)]; timed, the search aims at "
        "the middle",
    )

    @model_validator(mode="after")
    def _one(self) -> SpeedTarget:
        if (self.macs_ratio is None) == (self.latency_speedup is None):
            raise ValueError("target needs exactly one of macs_ratio, latency_speedup")
        if any(not 0 <= f < 1 for f in self.depth_fractions):
            raise ValueError("target.depth_fractions must be in [0, 1)")
        return self


class TargetConfig(SpeedTarget):
    """What pruning must reach: a measured ONNX Runtime speedup or a MACs ratio. The planner searches how many
    residual blocks to remove and how wide each channel group stays, and keeps the plan with the best
    estimated accuracy (``prune.planner``)."""

    depth_fractions: list[float] = Field(
        default_factory=lambda: [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75],
        description="shares of the removable blocks to try removing (up to 3/4: at 3x on ResNet-56 the best plan "
        "removes 16 of 25 blocks at full width, docs/benchmarks.md)",
    )
    refits: int = Field(2, ge=0, description="re-plans of a depth option whose measured speedup misses the band")
    block_choice: Literal["recoverability", "kd"] = Field(
        "kd",
        description="which blocks go first: recoverability (the error of the best affine 1x1 map from a block's "
        "input to its output, per millisecond its removal saves; PRACTISE) or kd (the smallest KD-loss increase "
        "of the cut before recovery, lazy-greedy)",
    )
    val_samples: int = Field(500, gt=0, description="training samples held out to estimate each plan's accuracy")
    calib_samples: int = Field(
        256, gt=0, description="training samples for block scores, Taylor costs and BatchNorm re-estimation"
    )
    score_samples: int = Field(
        128, gt=0, description="of the calibration samples, how many score the blocks (block_choice: kd)"
    )
    finalists: int = Field(
        2,
        ge=1,
        description="candidates timed end to end in the band before the plan is chosen (the best by estimated "
        "accuracy first; the others are priced by the latency table, not timed)",
    )
    plan_recovery: bool = Field(
        False,
        description="compare candidates after the stage's recovery (least squares per candidate: slower); off: "
        "candidates are compared after BatchNorm re-estimation, and the chosen plan is recovered once",
    )
    latency_cache: str | bool = Field(
        True,
        description="folder of the per-machine latency table cache (true: $DISTILLPRUNE_CACHE_DIR, else "
        "$XDG_CACHE_HOME/distillprune, else ~/.cache/distillprune; false: no cache)",
    )


class SessionConfig(TrainingOptions):
    """What the prune-while-distilling session (``prune.session``) reads of every family's config: ``steps``
    times cut a little, re-fit what the cut disturbed (``recovery``), then train ``epochs_per_step`` with KD
    (``distill``); ``target`` searches what to cut for a MACs ratio or a measured speedup. A family's config
    (``PruneConfig``, ``TransformerPruneConfig``) adds what it cuts. The training options (optimizer,
    schedule...) apply to the epochs between steps."""

    target: SpeedTarget | None = None
    steps: int = Field(1, ge=1)
    epochs_per_step: float = Field(
        0,
        ge=0,
        allow_inf_nan=False,
        description="training after each cut, in epochs; a fraction trains that share of an epoch's batches, "
        "the steps continuing through the epoch (4 steps of 0.25: one epoch in all)",
    )
    lr_span: Literal["step", "stage"] = Field(
        "step",
        description="step: the lr schedule runs its course in every step's training; stage: one schedule over "
        "all the steps (one warm-up, one decay: for short budgets cut into many steps)",
    )
    distill: DistillConfig | None = Field(
        default_factory=DistillConfig, description="KD between steps (null: cross-entropy)"
    )
    recovery: RecoveryConfig | None = Field(
        None,
        description="re-fit the layers a cut disturbed, before training (prune.recovery); unset: the family's "
        "default (a CNN: least squares with a target, off otherwise; an encoder: off)",
    )

    def recovery_config(self) -> RecoveryConfig | None:
        """The recovery in force (None: off)."""
        r = self.recovery
        return None if r is None or r.method == "none" else r


class PruneConfig(SessionConfig, SSLOptions):
    """Prune a CNN while distilling: ``steps`` times remove residual blocks (``depth``, on the first step) and a
    share of channels (``width``), or raise a magnitude sparsity (``unstructured``), then train
    ``epochs_per_step`` with KD from the dense teacher (or self-supervised, ``ssl``). ``target`` searches the
    blocks and each channel group's width that reach a MACs ratio or a measured speedup."""

    width: WidthConfig | None = None
    depth: DepthConfig | None = None
    unstructured: UnstructuredConfig | None = None
    target: TargetConfig | None = Field(
        None, description="search width ratio (and depth) to reach a MACs ratio or a measured ORT speedup"
    )
    bn_calib_samples: int = Field(
        0,
        ge=0,
        description="after each cut, re-estimate BatchNorm statistics on this many training samples (0: off; "
        "with a target, the target's calib_samples)",
    )

    def recovery_config(self) -> RecoveryConfig | None:
        """The recovery in force: the one given, else least squares with a target, else none (a recipe without a
        target names `recovery: {method: lstsq}`: the fine-tune regime's gentle lr assumes a start close to the
        teacher, docs/fine-tuning.md)."""
        r = self.recovery if self.recovery is not None else (RecoveryConfig() if self.target is not None else None)
        return None if r is None or r.method == "none" else r

    def bn_samples(self, planned: bool) -> int:
        """The one BatchNorm re-estimation rule: training samples BatchNorm statistics are re-estimated on after a
        structural cut (0: kept) -- ``bn_calib_samples``, or with a plan the target's ``calib_samples`` (the
        planner's estimate assumed it), unless a least-squares recovery matched the dense pre-BatchNorm outputs
        the kept statistics normalise (``recovery.bn_after``)."""
        samples = self.bn_calib_samples
        if planned and not samples and self.target is not None:
            samples = self.target.calib_samples
        r = self.recovery_config()
        return 0 if r is not None and not r.recalibrate() else samples

    @model_validator(mode="after")
    def _something(self) -> PruneConfig:
        if not (self.width or self.depth or self.unstructured):
            raise ValueError("prune needs at least one of width, depth, unstructured")
        if self.unstructured and (self.width or self.depth):
            raise ValueError("put unstructured pruning in its own prune stage: masks do not survive channel removal")
        if self.target is not None:
            if self.width is None:
                raise ValueError("target needs a width block (importance, round_to); its ratio is searched")
            if self.depth is not None:
                raise ValueError("with a target, depth is searched: use target.depth_fractions instead of depth")
        elif self.width is not None and self.width.ratio is None:
            raise ValueError("width.ratio is required unless the stage has a target")
        return self
