"""The one training loop."""

from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
from distillprune.train.device import resolve_device
from distillprune.train.trainer import FitRun, FitSettings, evaluate, fit

__all__ = [
    "OptimizerConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "FitRun",
    "FitSettings",
    "evaluate",
    "fit",
    "resolve_device",
]
