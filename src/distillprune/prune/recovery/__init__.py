"""Recovery after a structural cut: re-fit what the cut disturbed so the pruned model matches the dense one
before any training step (least-squares reconstruction, compensation without data)."""

from distillprune.prune.recovery.solve import Gram, ridge_solve

__all__ = ["Gram", "ridge_solve"]
