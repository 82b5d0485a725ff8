"""ONNX export: parity with torch, a dynamic batch axis, atomic writes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from unit_helpers import TINY_DIGITS, randomise_bn, uniform_cut

from distillprune.export.onnx import export_onnx, onnx_bytes, parity, session
from distillprune.models import build_model
from distillprune.prune.config import WidthConfig
from distillprune.prune.depth import remove_block


def digits_cnn():
    torch.manual_seed(0)
    return randomise_bn(build_model("digits_cnn", 10, (1, 8, 8), **TINY_DIGITS)).eval()


def mlp():
    torch.manual_seed(0)
    return build_model("mlp", 5, (12,), hidden=(16, 8)).eval()


def pruned_digits_cnn():
    m = digits_cnn()
    remove_block(m, "layer1.1")
    uniform_cut(m, WidthConfig(ratio=0.5, round_to=4), torch.zeros(1, 1, 8, 8))
    return m.eval()


MODELS = {
    "digits_cnn": (digits_cnn, (1, 8, 8), 10),
    "mlp": (mlp, (12,), 5),
    "pruned_digits_cnn": (pruned_digits_cnn, (1, 8, 8), 10),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_export_parity_and_dynamic_batch(tmp_path, name):
    make, shape, classes = MODELS[name]
    model = make()
    path = export_onnx(model, shape, tmp_path / "m.onnx")
    assert path.exists() and path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # atomic: no temporary left behind
    onnx.checker.check_model(onnx.load(str(path)))

    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    par = parity(model, path, x)
    assert par["max_abs_diff"] < 1e-4
    assert par["top1_agreement"] == 1.0

    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for bs in (1, 5):
        xb = x[:bs]
        out = sess.run(None, {"input": xb.numpy()})[0]
        assert out.shape == (bs, classes)
        with torch.no_grad():
            np.testing.assert_allclose(out, model(xb).numpy(), atol=1e-4, rtol=0)


def test_export_does_not_touch_the_model():
    model = digits_cnn().train()
    before = copy.deepcopy(model.state_dict())
    blob = onnx_bytes(model, (1, 8, 8))
    assert model.training  # exported from a copy in eval mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # the exported graph is the eval-mode network (BN from running statistics)
    x = torch.randn(4, 1, 8, 8)
    out = session(blob).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, copy.deepcopy(model).eval()(x).numpy(), atol=1e-4, rtol=0)


def test_parity_detects_a_different_model(tmp_path):
    model = digits_cnn()
    path = export_onnx(model, (1, 8, 8), tmp_path / "m.onnx")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.bias.add_(torch.arange(10.0))
    par = parity(other, path, torch.randn(8, 1, 8, 8))
    assert par["max_abs_diff"] > 1.0
    assert par["top1_agreement"] < 1.0


def test_parity_accepts_bytes():
    model = mlp()
    par = parity(model, onnx_bytes(model, (12,)), torch.randn(3, 12))
    assert par["max_abs_diff"] < 1e-4 and par["top1_agreement"] == 1.0
