"""Recovery after a structural cut: re-fit what the cut disturbed so the pruned model matches the dense one
before any training step (least-squares reconstruction, compensation without data)."""

from distillprune.prune.recovery.api import recover_
from distillprune.prune.recovery.config import RecoveryConfig
from distillprune.prune.recovery.report import LayerRecovery, RecoveryReport
from distillprune.prune.recovery.solve import Gram, ridge_solve

__all__ = ["Gram", "LayerRecovery", "RecoveryConfig", "RecoveryReport", "recover_", "ridge_solve"]
