"""Distillation losses: one file each, registered in LOSSES. Importing this package registers them."""

from distillprune.distill.losses import attention, ce, crd, dist, dkd, feature, kd, pkt, rkd  # noqa: F401
from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs

__all__ = ["LOSSES", "DistillLoss", "Outputs"]
