"""Target-driven search: a latency / MACs budget becomes a pruning plan."""
from distillprune.auto.search import Plan, TargetConfig, search

__all__ = ["Plan", "TargetConfig", "search"]
