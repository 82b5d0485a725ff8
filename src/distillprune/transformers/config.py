"""Options of transformer pruning: ``prune_transformer`` stage and ``distillprune.prune_(model, cfg)`` with a
``TransformerPruneConfig``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, model_validator

from distillprune.core.config import StrictModel
from distillprune.distill.config import DistillConfig
from distillprune.prune.config import SessionConfig, SpeedTarget
from distillprune.prune.criteria import check_family
from distillprune.train.config import OptimizerConfig
from distillprune.transformers import importance as _importance  # noqa: F401  (registers the fisher criterion)

if TYPE_CHECKING:
    CriterionName = str
else:  # a registered criterion that scores an encoder's heads and FFN neurons
    CriterionName = Annotated[str, AfterValidator(lambda n: check_family(n, "encoder", "importance"))]


class TransformerTargetConfig(SpeedTarget):
    """A transformer's target: the share of layers to drop (``depth_fractions``) and one heads/FFN ratio,
    searched up to ``max_width_ratio``, per option, until a candidate lands in the band (``tolerance``;
    nothing else: the CNN planner's refits and sample counts are not options here)."""

    depth_fractions: list[float] = Field(
        default_factory=lambda: [0.0], description="shares of the encoder layers to try dropping"
    )
    max_width_ratio: float = Field(0.75, gt=0, lt=1, description="upper end of the heads/FFN ratio search")


class HeadsConfig(StrictModel):
    """Remove attention heads (whole heads: the head size stays, so the kernels keep their shapes)."""

    ratio: float | None = Field(
        None, gt=0, lt=1, description="share of the model's heads removed (searched with a target)"
    )
    global_ranking: bool = Field(
        True,
        description="rank heads across layers (layers keep different counts); false: the same share in every layer",
    )
    min_per_layer: int = Field(1, ge=1, description="heads every layer keeps")


class FfnConfig(StrictModel):
    """Remove FFN intermediate neurons, kept counts rounded to a multiple of round_to in every layer."""

    ratio: float | None = Field(None, gt=0, lt=1, description="share of FFN neurons removed (searched with a target)")
    global_ranking: bool = Field(False, description="rank neurons across layers; false: the same share per layer")
    round_to: int = Field(64, gt=0, description="kept neurons per layer: nearest multiple (hardware-friendly)")


class LayersConfig(StrictModel):
    """Drop whole encoder layers, chosen greedily by the smallest increase of the KD loss when skipped."""

    drop: int = Field(..., ge=1, description="number of layers removed")


class TransformerPruneConfig(SessionConfig):
    """Prune an encoder while distilling: ``steps`` times remove heads / FFN neurons (Fisher mask importance,
    Kwon et al. 2022) -- layers on the first step -- then train ``epochs_per_step`` with KD from the
    unpruned model. ``target`` searches layers x width for a measured speedup or a MACs ratio. ``recovery``
    (``method: lstsq``; off by default: on MiniLM, reduced, one epoch, it did not raise the cosine after
    training, docs/benchmarks.md) re-fits the attention output and FFN down projections to the dense outputs
    after each cut (``transformers.recover``; its ridge ``damp`` defaults to 1e-4 here, its calibration to the
    ``calib_samples`` texts the cuts are scored on)."""

    heads: HeadsConfig | None = None
    ffn: FfnConfig | None = None
    layers: LayersConfig | None = None
    importance: CriterionName = Field(
        "fisher", description="fisher: squared mask gradients of the output likelihood (Kwon et al. 2022)"
    )
    calib_samples: int = Field(256, gt=0, description="training samples scoring heads, neurons and layers")
    target: TransformerTargetConfig | None = Field(
        None,
        description="search layers to drop and the heads/FFN ratio that reach a measured ORT speedup or a MACs ratio",
    )
    distill: DistillConfig | None = Field(
        default_factory=DistillConfig,
        description="KD between steps (default loss: embedding for embedders, kd for classifiers; null: cross-entropy)",
    )
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.01)
    )

    @model_validator(mode="after")
    def _something(self) -> TransformerPruneConfig:
        if not (self.heads or self.ffn or self.layers or self.target):
            raise ValueError("prune_transformer needs at least one of heads, ffn, layers, target")
        if self.target is None:
            for name in ("heads", "ffn"):
                block = getattr(self, name)
                if block is not None and block.ratio is None:
                    raise ValueError(f"{name}.ratio is required unless the stage has a target")
        elif self.layers is not None:
            raise ValueError("with a target, layers are searched: use target.depth_fractions instead of layers")
        if self.recovery is not None and self.recovery.method == "bias":
            raise ValueError(
                "recovery.method: an encoder re-fits its projections by least squares (lstsq) or not (none)"
            )
        return self
