"""What only a GPU can check: bf16 + channels_last training through the one trainer, and CUDA-graph latency.
Marked ``gpu``: skipped where there is no CUDA (CI); run on a lent GPU with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

import distillprune as dp
from distillprune.distill.distiller import Distiller, snapshot
from distillprune.measure.latency import LatencyConfig, torch_latency
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train.context import Context, LoaderOptions

pytestmark = pytest.mark.gpu


def test_kd_training_on_cuda_with_bf16_and_channels_last(digits_bundle):
    torch.manual_seed(0)
    teacher = dp.build_model("digits_cnn", 10, (1, 8, 8), widths=[16, 32, 32], blocks=[1, 1, 1])
    student = dp.build_model("digits_cnn", 10, (1, 8, 8), widths=[8, 16, 16], blocks=[1, 1, 1])
    runtime = RuntimeConfig(device="cuda", amp="bf16", channels_last=True, progress=False, tensorboard=False)
    hist = fit(
        student,
        digits_bundle,
        FitSettings(2, OptimizerConfig(lr=0.1), ScheduleConfig()),
        Distiller.from_specs(snapshot(teacher), [{"name": "kd"}]),
        context=Context(runtime, LoaderOptions(batch_size=128)),
    )
    assert next(student.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist) and hist[-1]["test_acc"] > 20


def test_cuda_graph_latency_is_measured():
    model = dp.build_model("resnet20", 10, (3, 32, 32))
    cfg = LatencyConfig(warmup=2, repeats=3, min_window_s=0.01)
    eager = torch_latency(model, (3, 32, 32), 64, cfg=cfg, mode="eager")
    graph = torch_latency(model, (3, 32, 32), 64, cfg=cfg, mode="graph")
    assert eager > 0 and graph > 0
