"""Search a recipe's knobs with Optuna: ``tune(recipe, space, trials=..., out=...) -> TuneReport``."""

from distillprune.tune.api import TuneError, tune
from distillprune.tune.report import TrialRecord, TuneReport
from distillprune.tune.space import Param, Space, SpaceError, load_space

__all__ = ["Param", "Space", "SpaceError", "TrialRecord", "TuneError", "TuneReport", "load_space", "tune"]
