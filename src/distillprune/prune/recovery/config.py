"""Options of the recovery engine: ``prune.recovery`` (and ``prune_transformer.recovery``) in a recipe,
``recover_(..., cfg)`` in the library: one type for every family."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distillprune.core.config import StrictModel


class RecoveryConfig(StrictModel):
    """Re-fit what a structural cut disturbed, before any gradient step (``prune.recovery``).

    ``lstsq``: every Conv2d/Linear downstream of a cut is re-solved, in forward order, so that on calibration
    inputs its output matches the dense model's output at the same module (ridge regression, im2col for a
    conv). ``bias``: no data needed; the mean contribution of each removed input channel is folded into its
    consumer's bias (the channel's mean from its producer's BatchNorm statistics). ``none``: off.
    """

    def recalibrate(self) -> bool:
        """Whether BatchNorm statistics are re-estimated after this recovery (when there is data)."""
        return self.method != "lstsq" or self.bn_after

    method: Literal["lstsq", "bias", "none"] = Field("lstsq", description="lstsq | bias | none")
    scope: Literal["downstream", "consumers"] = Field(
        "downstream",
        description="lstsq: every layer after the first cut (downstream), or only the layers that read a cut "
        "tensor (consumers: lost input channels, or first after a removed block)",
    )
    calib_samples: int = Field(1024, gt=0, description="calibration inputs (training data) for lstsq")
    positions_per_image: int = Field(
        64, gt=0, description="conv rows per image: output positions sampled (seeded) to bound memory"
    )
    damp: float | None = Field(
        None,
        ge=0,
        description="ridge, relative to the mean diagonal of X^T X (unset: 1e-3 for a CNN's layers, 1e-4 for an "
        "encoder's projections)",
    )
    bn_after: bool = Field(
        False,
        description="lstsq: re-estimate BatchNorm statistics afterwards too (off: each re-fit layer matches the "
        "dense pre-BN output, which the kept dense statistics already normalise; see docs/benchmarks.md)",
    )
    stream: bool = Field(
        True,
        description="lstsq: re-fit the last layer of each surviving residual branch so the block's output "
        "(branch + shortcut) matches the dense one, compensating removed blocks and a cut stream",
    )
    relu: bool = Field(
        True,
        description="lstsq: a layer followed by BN -> ReLU (or BN -> + shortcut -> ReLU) is solved a second time "
        "against targets gated by the ReLU (only where the dense ReLU is open must it match), keeping the "
        "solution with the lowest error after the ReLU (prune.recovery.relu; +0.4 pp at E = 0 on the real ResNet-56, "
        "docs/benchmarks.md)",
    )
