"""Distillation losses: one file each, registered in LOSSES. Importing this package registers them."""
from distillprune.distill.losses import ce, feature, kd  # noqa: F401  (registration)
from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs

__all__ = ["LOSSES", "DistillLoss", "Outputs"]
