"""Low-rank factorization: truncated SVD of Linear and Conv2d layers, recorded in the history."""

from distillprune.lowrank.config import LowRankConfig
from distillprune.lowrank.svd import LayerPlan, LowRankOp, LowRankReport, choose_rank, factorize, lowrank_, plan

__all__ = ["LayerPlan", "LowRankConfig", "LowRankOp", "LowRankReport", "choose_rank", "factorize", "lowrank_", "plan"]
