"""Quantization: int8 static (3 calibration methods) / dynamic / QAT, fp16 / bf16, each checked against
the float model by top-1 agreement; pruned models quantize as they are; bad inputs fail in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from compress_helpers import digits, trained
from torch import nn

import distillprune as dp
from distillprune.errors import QuantizationError, RecipeError
from distillprune.quant.base import module_path
from distillprune.quant.qat import FakeQuant, QuantWrapper, conv_bn_pairs


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("calib", ["minmax", "percentile", "entropy"])
def test_static_int8_agrees_with_float(tmp_path: Path, calib: str):
    model = trained()
    res = dp.quantize(
        model,
        {"method": "static", "calibration": {"method": calib, "samples": 128}},
        digits(),
        out=tmp_path / "m.int8.onnx",
    )
    assert res.agreement >= 0.95, res.render()
    assert abs(res.accuracy - res.float_accuracy) <= 2.0
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "m.int8.onnx")
    assert res.bytes < 0.8 * res.float_bytes  # int8 weights (this tiny net is mostly graph overhead)
    assert res.details["calibration"] == calib and res.details["calibration_samples"] == 128


def test_static_writes_the_phases(tmp_path: Path):
    from distillprune.quant import QuantConfig, StaticInt8
    from distillprune.quant.calibration import bundle_batches

    q = StaticInt8(QuantConfig(), tmp_path)
    prepared = q.prepare(trained(), (1, 8, 8))
    ranges = q.calibrate(bundle_batches(digits(), QuantConfig().calibration))
    out = q.convert(tmp_path / "q.onnx")
    assert prepared.exists() and ranges.exists() and out.exists()
    assert "BatchNormalization" not in _ops(prepared)  # folded into the convolutions


def test_dynamic_int8_on_an_mlp(tmp_path: Path):
    res = dp.quantize(trained("mlp"), {"method": "dynamic"}, digits(), out=tmp_path / "mlp.onnx")
    assert res.agreement >= 0.97, res.render()
    assert res.details["integer_nodes"] >= 2
    assert "MatMulInteger" in _ops(tmp_path / "mlp.onnx")


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_half_precision_export(tmp_path: Path, kind: str):
    from onnx import TensorProto

    res = dp.quantize(trained(), {"method": kind}, digits(), out=tmp_path / f"m.{kind}.onnx")
    assert res.agreement >= 0.97, res.render()
    m = onnx.load(str(tmp_path / f"m.{kind}.onnx"))
    want = TensorProto.FLOAT16 if kind == "fp16" else TensorProto.BFLOAT16
    assert {i.data_type for i in m.graph.initializer if i.data_type != TensorProto.INT64} == {want}
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 at the boundary
    assert res.bytes < 0.6 * res.float_bytes


def test_qat_trains_with_kd_and_exports_int8(tmp_path: Path):
    data = digits()
    model = trained()
    before = model.layer1[0].conv1.weight.detach().clone()
    small = dp.DataBundle(data.train.subset(256), data.test, 10, data.classes, data.mean, data.std)
    cfg = {"method": "qat", "qat": {"epochs": 1, "optimizer": {"lr": 0.01}}}
    res = dp.quantize(model, cfg, small, out=tmp_path / "qat.onnx")
    assert res.method == "qat" and res.reference.startswith("QAT model")
    assert res.agreement >= 0.95, res.render()
    assert res.accuracy >= 85
    assert not any(isinstance(m, QuantWrapper) for m in model.modules())  # the wrappers came off
    assert not torch.equal(before, model.layer1[0].conv1.weight)  # QAT trained the float weights
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "qat.onnx")


def test_fake_quant_folds_batchnorm_exactly():
    model = trained()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    ref = model(x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(conv_bn_pairs(model)) == sorted(convs)  # every conv here (shortcuts too) has its BatchNorm
    fq = FakeQuant(model)
    fq.wrap()
    fq.set_mode("frozen")  # observers never saw data: activations pass through, weights are quantized
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, ref, atol=0.1 * ref.abs().max().item())  # int8 weights only: close, not equal
    fq.unwrap()
    assert torch.equal(model(x), ref)


def test_qat_trains_through_a_live_batchnorm():
    """In training the wrapped conv is normalised by the batch (BN's conditioning kept) and BN's running
    statistics move; folding with frozen statistics made QAT of a pruned CIFAR ResNet diverge (62% -> 23%)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_var.fill_(1e-3)  # tiny running variance: the frozen fold would scale the lr by ~1000
        bn.weight.uniform_(0.5, 1.5)
    ref_bn = nn.BatchNorm2d(6)
    ref_bn.load_state_dict(bn.state_dict())
    w = QuantWrapper(conv, bn, per_channel=True, signed=False)
    w.act_in.mode = w.act_out.mode = "frozen"  # observers never saw data: activations pass through
    x = torch.randn(16, 4, 8, 8)
    w.train()
    ref_bn.train()
    y = w(x)
    expected = ref_bn(conv(x))
    assert torch.allclose(y, expected, atol=0.05 * expected.abs().max().item())  # int8 weights: close
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=0.05)
    assert not torch.allclose(bn.running_var, torch.full((6,), 1e-3))  # statistics were updated
    y.square().mean().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().max() < 10  # the gradient is not inflated by gamma / running_std


@pytest.mark.parametrize(
    "prune",
    [{"width": {"ratio": 0.5, "round_to": 4}}, {"unstructured": {"sparsity": 0.5}}],
    ids=["width", "unstructured"],
)
def test_pruned_model_quantizes_without_hand_fixes(tmp_path: Path, prune: dict):
    model = trained()
    report = dp.prune_(model, prune, dp.Examples(torch.zeros(1, 1, 8, 8), 10))
    assert report.history
    res = dp.quantize(model, {"method": "static"}, digits(), out=tmp_path / "pruned.int8.onnx")
    assert res.agreement >= 0.9, res.render()


# ---- bad inputs: one clear line, a DistillpruneError subclass ----


def test_empty_calibration_set(tmp_path: Path):
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        dp.quantize(trained(), {"method": "static"}, digits(), out=tmp_path / "q.onnx", calibration=[])


def test_calibration_batches_of_the_wrong_shape(tmp_path: Path):
    with pytest.raises(QuantizationError, match="does not fit the model"):
        dp.quantize(
            trained(),
            {"method": "static"},
            digits(),
            out=tmp_path / "q.onnx",
            calibration=[torch.zeros(4, 3, 8, 8)],
        )


def test_nothing_to_quantize(tmp_path: Path):
    class Pool(nn.Module):  # no Conv / Gemm / MatMul at all
        def forward(self, x):
            return x.flatten(1)[:, :10] * 2

    with pytest.raises(QuantizationError, match="nothing to quantize"):
        dp.quantize(Pool(), {"method": "static"}, digits(), out=tmp_path / "q.onnx")


def test_unsupported_op_type_is_a_recipe_error():
    with pytest.raises(RecipeError, match="cannot be quantized by ONNX Runtime.*did you mean 'Softmax'"):
        dp.quantize(trained(), {"op_types": ["Conv", "Softmaxx"]}, digits())


def test_exclude_that_matches_nothing(tmp_path: Path):
    with pytest.raises(QuantizationError, match="match no layer"):
        dp.quantize(trained(), {"layers": {"exclude": ["layer9.*"]}}, digits(), out=tmp_path / "q.onnx")
    res = dp.quantize(trained(), {"layers": {"exclude": ["conv1", "fc"]}}, digits(), out=tmp_path / "q.onnx")
    assert res.agreement >= 0.95
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept_float = [n for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] not in dequantized]
    assert {module_path(n.name) for n in kept_float} == {"conv1", "fc"}  # excluded layers keep float weights
    only = dp.quantize(trained(), {"layers": {"include": ["layer1"]}}, digits(), out=tmp_path / "q1.onnx")
    assert only.details["quantized_nodes"] < res.details["quantized_nodes"]


def test_qat_needs_a_traceable_model(tmp_path: Path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(144, 10)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                y = y * 2
            return self.fc(y.flatten(1))

    with pytest.raises(QuantizationError, match="torch.fx"):
        dp.quantize(Branchy(), {"method": "qat", "qat": {"epochs": 1}}, digits(), out=tmp_path / "q.onnx")


def test_low_agreement_is_an_error(tmp_path: Path):
    # activation ranges from 8 samples, clipped at the 90.5th percentile: far too narrow
    cfg = {"min_agreement": 1.0, "calibration": {"method": "percentile", "percentile": 90.5, "samples": 8}}
    with pytest.raises(QuantizationError, match="min_agreement 100%"):
        dp.quantize(trained(), cfg, digits(), out=tmp_path / "q.onnx")
