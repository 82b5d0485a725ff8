"""torchvision and timm models as users bring them (marker ``vision``): run in the vision venv (``make vision``);
elsewhere they skip, saying why (torchvision/timm missing, or a torchvision built for another torch)."""

from __future__ import annotations

import copy

import pytest
import torch

import distillprune as dp
from distillprune.core.extras import ExtraMissing, import_extra
from distillprune.export.onnx import onnx_bytes, parity
from distillprune.measure.metrics import count_macs
from distillprune.prune.depth import removable_blocks

try:
    torchvision = import_extra("torchvision", "vision", "the vision tests")
    timm = import_extra("timm", "vision", "the vision tests")
    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the compiled operators load
except (ExtraMissing, RuntimeError) as e:
    pytest.skip(str(e), allow_module_level=True)

pytestmark = pytest.mark.vision
SHAPE = (3, 32, 32)

# residual blocks torch.fx finds in each graph: every block whose shortcut is the identity
RESIDUALS = {
    ("torchvision", "resnet18"): 5,  # 8 basic blocks, 3 with a downsampling shortcut
    ("torchvision", "mobilenet_v2"): 10,  # 17 inverted residuals, 7 change shape or stride
    ("timm", "resnet18"): 5,
    ("timm", "efficientnet_b0"): 9,  # 16 blocks, the first of each of the 7 stages changes shape
    ("timm", "convnext_atto"): 12,  # 2+2+6+2 blocks, all residual
    ("torchvision", "vgg11_bn"): 0,
}


def build(source: str, arch: str):
    torch.manual_seed(0)
    return dp.make_model({"name": source, "kwargs": {"arch": arch}}, 10, SHAPE)


@pytest.mark.parametrize("source, arch", list(RESIDUALS))
def test_residual_blocks_are_found_in_the_graph(source, arch):
    model, _ = build(source, arch)
    assert len(removable_blocks(model)) == RESIDUALS[(source, arch)]


@pytest.mark.parametrize(
    "source, arch", [("torchvision", "resnet18"), ("torchvision", "mobilenet_v2"), ("timm", "efficientnet_b0")]
)
def test_width_and_depth_pruned_run_export_and_replay(source, arch, tmp_path):
    model, spec = build(source, arch)
    model.eval()
    before = count_macs(model, SHAPE)
    report = dp.prune_(
        model, {"width": {"ratio": 0.3}, "depth": {"blocks": 2}}, dp.Examples(torch.randn(4, *SHAPE), 10), history=spec
    )
    assert len(report.removed_blocks) == 2 and report.channels_removed and report.skipped == []
    assert count_macs(model, SHAPE) < before
    x = torch.randn(2, *SHAPE)
    p = parity(model, onnx_bytes(model, SHAPE), x)
    assert p["max_abs_diff"] < 1e-3 and p["top1_agreement"] == 1.0
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    back = dp.load_checkpoint(tmp_path / "ck")[0]
    torch.testing.assert_close(back(x), model(x))


def test_trained_weights_load_into_the_same_architecture(tmp_path):
    src, _ = build("torchvision", "resnet18")
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    model, spec = dp.make_model(
        {"name": "torchvision", "kwargs": {"arch": "resnet18"}, "weights": str(tmp_path / "r18.pt")}, 10, SHAPE
    )
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(model.eval()(x), src.eval()(x))
    assert spec.ref["weights"] == str(tmp_path / "r18.pt")


def test_imagenet_weights_with_a_new_head_and_a_folded_vgg_classifier(tmp_path):
    """1000-class weights adapted to 10 classes at 32x32: the classifier is new, the 25088x4096 Linear folds
    to 512x4096 and computes what it computed before."""
    imagenet = torchvision.models.vgg11_bn(num_classes=1000).eval()
    torch.save(imagenet.state_dict(), tmp_path / "vgg.pt")
    model, spec = dp.make_model(
        {
            "name": "torchvision",
            "kwargs": {"arch": "vgg11_bn"},
            "weights": str(tmp_path / "vgg.pt"),
            "head": {"num_classes": 10},
        },
        10,
        SHAPE,
    )
    model.eval()
    assert model.classifier[0].in_features == 512 and model.classifier[6].out_features == 10
    assert [op.op for op in spec.history] == ["fold_pool"]
    x = torch.randn(2, *SHAPE)
    body = copy.deepcopy(imagenet)
    body.classifier = body.classifier[:6]
    ours = copy.deepcopy(model)
    ours.classifier = ours.classifier[:6]
    torch.testing.assert_close(ours(x), body(x), rtol=1e-4, atol=1e-4)  # the pretrained function, kept
    assert count_macs(model, SHAPE) < count_macs(torchvision.models.vgg11_bn(num_classes=10), SHAPE)
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    torch.testing.assert_close(dp.load_checkpoint(tmp_path / "ck")[0](x), model(x))


@pytest.mark.parametrize(
    "source, arch",
    [
        ("torchvision", "mobilenet_v2"),
        ("torchvision", "resnet18"),
        ("timm", "efficientnet_b0"),
        ("timm", "convnext_atto"),
    ],
)
@pytest.mark.parametrize("target", [{"macs_ratio": 2.0}, {"latency_speedup": 2.0}])
def test_a_2x_target_plans_a_model_that_exports_and_reloads(source, arch, target, tmp_path):
    """The generality matrix on the real zoos: a 2x target is planned and cut through the transactional cutter
    (depthwise convs keep groups == channels), or refused in one line; a plan's model exports with parity,
    reloads from its checkpoint, and the report names what was left whole."""
    model, spec = build(source, arch)
    model.eval()
    cfg = {"width": {"round_to": 8}, "target": {**target, "depth_fractions": [0.0, 0.25], "refits": 1}}
    try:
        report = dp.prune_(model, cfg, dp.Examples(torch.randn(16, *SHAPE), 10), history=spec)
    except dp.DistillpruneError as e:
        assert "\n" not in str(e) and "the cuttable layers cannot reach" in str(e)
        return
    plan = report.plan
    assert plan is not None and plan.achieved is not None and plan.achieved >= 0.9 * 2.0
    assert all(s["reason"] for s in plan.skipped + report.skipped)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    x = torch.randn(2, *SHAPE)
    p = parity(model, onnx_bytes(model, SHAPE), x)
    assert p["max_abs_diff"] < 1e-3 and p["top1_agreement"] == 1.0
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    torch.testing.assert_close(dp.load_checkpoint(tmp_path / "ck")[0](x), model(x))


def test_a_timm_vit_loses_whole_heads_under_a_2x_macs_target(tmp_path):
    """timm's ViT attention (fused qkv, ``num_heads``, ``attn_dim``) is found and its heads are planned and cut
    whole; the model exports with parity and reloads from its checkpoint."""
    kwargs = {"arch": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 2}
    torch.manual_seed(0)
    model, spec = dp.make_model({"name": "timm", "kwargs": kwargs}, 10, SHAPE)
    model.eval()
    cfg = {"width": {"round_to": 8}, "target": {"macs_ratio": 2.0, "depth_fractions": [0.0], "refits": 1}}
    report = dp.prune_(model, cfg, dp.Examples(torch.randn(16, *SHAPE), 10), history=spec)
    assert 2.0 <= report.plan.achieved <= 2.0 * 1.25
    heads = [b.attn.num_heads for b in model.blocks]
    assert sum(heads) < 3 * len(heads)
    for b in model.blocks:
        a = b.attn
        assert a.attn_dim == a.num_heads * a.head_dim == a.proj.in_features and a.qkv.out_features == 3 * a.attn_dim
    x = torch.randn(2, *SHAPE)
    p = parity(model, onnx_bytes(model, SHAPE), x)
    assert p["max_abs_diff"] < 1e-3 and p["top1_agreement"] == 1.0
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    torch.testing.assert_close(dp.load_checkpoint(tmp_path / "ck")[0](x), model(x))
