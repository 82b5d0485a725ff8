"""Every registered quantization method (``QUANTIZERS``) writes an ONNX file that agrees with the float
model on a trained network, reports its size, and can be benchmarked; every stage type has a runner."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.data import DataConfig, load_data
from distillprune.distill.distiller import CrossEntropy
from distillprune.measure.bench import bench_onnx
from distillprune.measure.latency import LatencyConfig
from distillprune.quant import QUANTIZERS
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitSettings, fit

AGREEMENT = {"static": 0.95, "dynamic": 0.97, "qat": 0.95, "fp16": 0.98, "bf16": 0.95}


@pytest.fixture(scope="module")
def trained_mlp():
    torch.manual_seed(0)
    data = load_data(DataConfig(source="digits"))
    model = dp.build_model("mlp", 10, data.input_shape, hidden=(64,))
    fit(
        model,
        data,
        FitSettings(3, OptimizerConfig(lr=0.1), ScheduleConfig()),
        CrossEntropy(),
        context=Context(RuntimeConfig(device="cpu", progress=False, tensorboard=False), LoaderOptions(batch_size=64)),
    )
    return model.eval(), data


def test_every_quantizer_has_a_threshold_here():
    assert set(QUANTIZERS.names()) <= set(AGREEMENT), "add the new method's agreement threshold to this test"


@pytest.mark.parametrize("method", QUANTIZERS.names())
def test_quantizer_contract(method: str, trained_mlp, tmp_path: Path):
    model, data = trained_mlp
    out = tmp_path / f"m.{method}.onnx"
    cfg = {"method": method, **({"qat": {"epochs": 1, "optimizer": {"lr": 0.01}}} if method == "qat" else {})}
    res = dp.quantize(copy.deepcopy(model), cfg, data, out=out)
    assert res.method == method and Path(res.path) == out and out.stat().st_size == res.bytes
    assert res.agreement >= AGREEMENT[method], res.render()
    assert res.accuracy is not None and res.float_accuracy is not None
    json.dumps(res.to_dict())  # a report object: plain data
    (row,) = bench_onnx([out], data, LatencyConfig(batch_sizes=[1], repeats=1, warmup=0, min_window_s=0.001))
    assert row.bytes == res.bytes
    if method != "bf16":  # ORT's CPU provider has no bf16 kernels
        assert row.latency_ms["bs1"] > 0 and abs(row.accuracy - res.accuracy) < 1e-6
