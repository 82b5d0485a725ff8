"""Distillation losses: one file each, registered in LOSSES. Importing this package registers them."""

from distillprune.distill.losses import (  # noqa: F401
    aligned,
    attention,
    ce,
    crd,
    dist,
    dkd,
    embedding,
    feature,
    hidden,
    kd,
    mimic,
    minilm,
    pkt,
    rkd,
    seed,
)
from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs

__all__ = ["LOSSES", "DistillLoss", "Outputs"]
