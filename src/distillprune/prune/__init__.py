"""Pruning: structured (channels, Torch-Pruning graph), depth (residual blocks), unstructured masks;
prune-while-distilling (``PruneSession``, one per family ``Structure``) and its verb ``prune_``; target-driven
plans."""

from distillprune.prune import history as _history  # noqa: F401  (registers the history ops)
from distillprune.prune.api import prune_
from distillprune.prune.cnn import CnnStructure, PruneReport
from distillprune.prune.config import DepthConfig, PruneConfig, TargetConfig, UnstructuredConfig, WidthConfig
from distillprune.prune.planner import Candidate, Plan, PlanContext, PlanInputs, plan_target
from distillprune.prune.session import PruneSession
from distillprune.prune.structure import STRUCTURES, Structure, structure_for_config

__all__ = [
    "STRUCTURES",
    "Candidate",
    "CnnStructure",
    "DepthConfig",
    "Plan",
    "PlanContext",
    "PlanInputs",
    "PruneConfig",
    "PruneReport",
    "PruneSession",
    "Structure",
    "TargetConfig",
    "UnstructuredConfig",
    "WidthConfig",
    "plan_target",
    "prune_",
    "structure_for_config",
]
