"""The one training loop."""

from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
from distillprune.train.trainer import FitSettings, evaluate, fit, resolve_device

__all__ = ["OptimizerConfig", "RuntimeConfig", "ScheduleConfig", "FitSettings", "evaluate", "fit", "resolve_device"]
