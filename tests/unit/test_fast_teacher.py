"""The fast teacher path: BatchNorm folded into a checked copy, the original untouched, taps honoured,
and the teacher never trained."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distillprune.data import DataConfig, load_data
from distillprune.distill.distiller import Distiller
from distillprune.distill.fast_teacher import conv_bn_pairs, fast_teacher, fold_batchnorm
from distillprune.models import build_model
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train.context import Context, LoaderOptions

QUIET = RuntimeConfig(progress=False, tensorboard=False, threads=1)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(build_model("resnet", 10, (3, 16, 16), widths=[8, 16, 32], blocks=[2, 1, 1]))


def test_folded_teacher_equals_the_unfolded(teacher):
    x = torch.randn(6, 3, 16, 16)
    folded, convs = fold_batchnorm(teacher)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert len(convs) == bns and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), teacher(x), rtol=0, atol=1e-4)
    # the original keeps its BatchNorm layers (checkpoints and reports see the model as it was)
    assert isinstance(teacher.layer1[0].bn1, nn.BatchNorm2d)


def test_fast_teacher_matches_and_uses_channels_last(teacher):
    x = torch.randn(6, 3, 16, 16)
    call, root, speed = fast_teacher(teacher, [], x[:2])
    assert speed.folded and speed.channels_last and root is not teacher
    with torch.no_grad():
        torch.testing.assert_close(call(x), teacher(x), rtol=0, atol=1e-4)


def test_taps_keep_their_modules_and_features(teacher):
    x = torch.randn(4, 3, 16, 16)
    taps = ["layer1.0.bn2", "layer2.0.conv1", "layer3"]
    assert not {p for pair in conv_bn_pairs(teacher, set(taps)) for p in pair} & set(taps)
    call, root, speed = fast_teacher(teacher, taps, x[:2])
    assert isinstance(root.get_submodule("layer1.0.bn2"), nn.BatchNorm2d)  # a tapped BN is not folded
    assert isinstance(root.get_submodule("layer2.0.bn1"), nn.BatchNorm2d)  # nor the BN of a tapped conv
    assert isinstance(root.get_submodule("layer1.0.bn1"), nn.Identity)  # the rest is
    assert not speed.channels_last  # tapped features keep the layout the losses expect
    student = trained_like(build_model("resnet", 10, (3, 16, 16), widths=[8, 16, 32], blocks=[1, 1, 1]), 1)
    specs = [{"name": "kd"}, {"name": "fitnet", "pairs": [["layer1.0.bn2", "layer1.0.bn2"], ["layer3", "layer3"]]}]
    fast, slow = (Distiller.from_specs(teacher, specs, fold_teacher=f) for f in (True, False))
    for d in (fast, slow):
        d.attach(student, x[:2])
    with torch.no_grad():
        sf, tf = fast._outputs(student, x)
        ss, ts = slow._outputs(student, x)
    assert set(tf.features) == set(ts.features) == {"layer1.0.bn2", "layer3"}
    for k in ts.features:
        torch.testing.assert_close(tf.features[k], ts.features[k], rtol=0, atol=1e-4)
    torch.testing.assert_close(fast(student, x, None)[0], slow(student, x, None)[0], rtol=1e-4, atol=1e-5)
    assert fast.teacher_speed.folded and not slow.teacher_speed.folded
    for d in (fast, slow):
        d.detach()


def test_teacher_with_hooks_of_its_own_is_used_as_it_is(teacher):
    t = copy.deepcopy(teacher)
    t.layer1.register_forward_hook(lambda *a: None)
    call, root, speed = fast_teacher(t, [], torch.randn(2, 3, 16, 16))
    assert call is t and root is t and "hooks" in speed.note


def test_untraceable_teacher_is_used_as_it_is():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = self.bn(self.conv(x))
            if h.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                h = h * 2
            return self.fc(h.mean((2, 3)))

    t = Branchy().eval()
    call, _, speed = fast_teacher(t, [], torch.randn(2, 3, 8, 8))
    assert call is t and "torch.fx" in speed.note


def test_the_teacher_never_receives_gradients(teacher, tmp_path):
    rng = torch.Generator().manual_seed(0)
    import numpy as np

    x = torch.randint(0, 255, (96, 16, 16, 3), generator=rng, dtype=torch.uint8).numpy()
    y = torch.randint(0, 10, (96,), generator=rng).numpy()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    data = load_data(DataConfig(source="npz", path=str(tmp_path / "d.npz")))
    t = copy.deepcopy(teacher)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    student = trained_like(build_model("resnet", 10, (3, 16, 16), widths=[8, 8, 16], blocks=[1, 1, 1]), 2)
    d = Distiller.from_specs(t, [{"name": "kd"}])
    fit(
        student,
        data,
        FitSettings(1, OptimizerConfig(lr=0.05), ScheduleConfig()),
        d,
        context=Context(QUIET, LoaderOptions(batch_size=32, crop_padding=2, hflip=True)),
    )
    assert d.teacher_speed.folded
    fast_params = list(d._fast[0][1].parameters())
    assert all(p.grad is None and not p.requires_grad for p in list(t.parameters()) + fast_params)
    for k, v in t.state_dict().items():  # BN running statistics too: the teacher never ran in train mode
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
