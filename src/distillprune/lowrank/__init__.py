"""Low-rank factorization: truncated SVD of Linear and Conv2d layers, recorded in the history."""

from distillprune.lowrank.config import LowRankConfig
from distillprune.lowrank.svd import LayerPlan, choose_rank, factorize, lowrank_, plan, replay_lowrank

__all__ = ["LayerPlan", "LowRankConfig", "choose_rank", "factorize", "lowrank_", "plan", "replay_lowrank"]
