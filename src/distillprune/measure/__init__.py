"""Params, MACs, file size, measured latency."""

from distillprune.measure.latency import LatencyConfig, ort_latency, torch_latency
from distillprune.measure.metrics import ModelStats, count_macs, count_params, measure_model

__all__ = ["ModelStats", "count_macs", "count_params", "measure_model", "LatencyConfig", "ort_latency", "torch_latency"]
