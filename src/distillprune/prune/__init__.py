"""Pruning: structured (channels, Torch-Pruning graph), depth (residual blocks), unstructured masks;
prune-while-distilling (``PruneSession``) and its verb ``prune_``; target-driven plans."""

from distillprune.prune import history as _history  # noqa: F401  (registers the history ops)
from distillprune.prune.api import prune_
from distillprune.prune.config import DepthConfig, PruneConfig, TargetConfig, UnstructuredConfig, WidthConfig
from distillprune.prune.planner import Candidate, Plan, plan_target
from distillprune.prune.session import PruneReport, PruneSession

__all__ = [
    "Candidate",
    "DepthConfig",
    "Plan",
    "PruneConfig",
    "PruneReport",
    "PruneSession",
    "TargetConfig",
    "UnstructuredConfig",
    "WidthConfig",
    "plan_target",
    "prune_",
]
