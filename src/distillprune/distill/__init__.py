"""Distillation: losses (one file each, registered), objectives (offline, multi-teacher, cached, mutual),
their config, and the verb ``distill``."""

from distillprune.distill.api import DistillReport, distill
from distillprune.distill.config import DistillConfig, DistillOptions, LossSpec
from distillprune.distill.distiller import CrossEntropy, Distiller, freeze, snapshot
from distillprune.distill.losses import LOSSES, DistillLoss, Outputs

__all__ = [
    "DistillOptions",
    "LOSSES",
    "CrossEntropy",
    "DistillConfig",
    "DistillLoss",
    "DistillReport",
    "Distiller",
    "LossSpec",
    "Outputs",
    "distill",
    "freeze",
    "snapshot",
]
