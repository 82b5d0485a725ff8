"""Distillation losses against hand-computed values, and the Distiller's frozen teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from unit_helpers import tiny_digits_cnn

from distillprune.distill.distiller import CrossEntropy, Distiller
from distillprune.distill.losses import LOSSES, Outputs
from distillprune.distill.losses.ce import CELoss
from distillprune.distill.losses.feature import FitNetLoss, make_adapter
from distillprune.distill.losses.kd import KDLoss, soft_kl
from distillprune.errors import DataError, DistillpruneError

# small, fixed logits (batch 3, 4 classes): different enough that KL and CE are far from 0
ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -0.5, 3.0, 1.0], [2.0, 2.0, -2.0, 0.1]])
ZT = np.array([[0.5, 3.0, 0.0, -2.0], [1.0, 0.0, 2.0, 0.5], [-1.0, 2.5, 0.0, 0.3]])
Y = np.array([1, 2, 0])


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl_t(zs: np.ndarray, zt: np.ndarray, t: float) -> float:
    """T^2 * mean over the batch of sum_c p_t log(p_t / p_s), written out."""
    ps, pt = np_softmax(zs / t), np_softmax(zt / t)
    return float(t * t * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


def np_ce(zs: np.ndarray, y: np.ndarray) -> float:
    p = np_softmax(zs)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def outs(z: np.ndarray) -> Outputs:
    return Outputs(torch.tensor(z, dtype=torch.float32))


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_soft_kl_matches_formula(t):
    got = float(soft_kl(torch.tensor(ZS, dtype=torch.float32), torch.tensor(ZT, dtype=torch.float32), t))
    want = np_kl_t(ZS, ZT, t)
    assert want > 0.01  # the example is not degenerate
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_soft_kl_is_not_symmetric():
    # KL(p_t || p_s): swapping the arguments must give KL(p_s || p_t), a different number
    zs, zt = torch.tensor(ZS, dtype=torch.float32), torch.tensor(ZT, dtype=torch.float32)
    assert float(soft_kl(zt, zs, 2.0)) == pytest.approx(np_kl_t(ZT, ZS, 2.0), rel=1e-5)
    assert float(soft_kl(zs, zt, 2.0)) != pytest.approx(float(soft_kl(zt, zs, 2.0)), rel=1e-3)


@pytest.mark.parametrize("t,alpha", [(4.0, 0.9), (2.0, 0.5), (1.0, 0.0), (3.0, 1.0)])
def test_kd_loss_matches_hinton_formula(t, alpha):
    loss = KDLoss(temperature=t, alpha=alpha)
    got = float(loss(outs(ZS), outs(ZT), torch.tensor(Y)))
    want = alpha * np_kl_t(ZS, ZT, t) + (1 - alpha) * np_ce(ZS, Y)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_kd_loss_label_free_is_only_the_kl_term():
    loss = KDLoss(temperature=3.0, alpha=0.25)
    got = float(loss(outs(ZS), outs(ZT), None))
    # no alpha and no CE: T^2 * KL exactly
    assert got == pytest.approx(np_kl_t(ZS, ZT, 3.0), rel=1e-5)
    assert got != pytest.approx(0.25 * np_kl_t(ZS, ZT, 3.0), rel=1e-3)


def test_kd_loss_label_smoothing_is_passed_to_ce():
    plain = float(KDLoss(2.0, 0.0)(outs(ZS), outs(ZT), torch.tensor(Y)))
    smooth = float(KDLoss(2.0, 0.0, label_smoothing=0.2)(outs(ZS), outs(ZT), torch.tensor(Y)))
    eps, k = 0.2, ZS.shape[1]
    logp = np.log(np_softmax(ZS))
    q = np.full_like(logp, eps / k)
    q[np.arange(len(Y)), Y] += 1 - eps
    assert plain == pytest.approx(np_ce(ZS, Y), rel=1e-5)
    assert smooth == pytest.approx(float(-np.mean(np.sum(q * logp, axis=1))), rel=1e-5)


@pytest.mark.parametrize("targets", [None, torch.tensor([0, 1, 2])])
def test_kd_zero_when_student_equals_teacher(targets):
    z = torch.tensor(ZT, dtype=torch.float32)
    kd = soft_kl(z, z.clone(), 4.0)
    assert abs(float(kd)) < 1e-6
    full = KDLoss(4.0, 1.0)(Outputs(z), Outputs(z.clone()), targets)
    assert abs(float(full)) < 1e-6


def test_kd_shape_mismatch_raises():
    with pytest.raises(DistillpruneError, match="differ"):
        soft_kl(torch.zeros(2, 4), torch.zeros(2, 5), 1.0)
    with pytest.raises(DistillpruneError):
        KDLoss()(Outputs(torch.zeros(3, 4)), Outputs(torch.zeros(2, 4)), None)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": -0.1}, {"alpha": 1.5}])
def test_kd_invalid_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        KDLoss(**kwargs)


def test_kd_gradient_matches_closed_form():
    # d/dz_s [T^2 KL(p_t || p_s)] / batch = T (p_s - p_t) / B
    t = 2.0
    zs = torch.tensor(ZS, dtype=torch.float32, requires_grad=True)
    soft_kl(zs, torch.tensor(ZT, dtype=torch.float32), t).backward()
    want = t * (np_softmax(ZS / t) - np_softmax(ZT / t)) / len(ZS)
    np.testing.assert_allclose(zs.grad.numpy(), want, rtol=1e-5, atol=1e-6)


def test_ce_loss_term():
    assert float(CELoss()(outs(ZS), outs(ZT), torch.tensor(Y))) == pytest.approx(np_ce(ZS, Y), rel=1e-5)
    assert float(CELoss()(outs(ZS), outs(ZT), None)) == 0.0


def test_losses_registry_has_the_builtin_losses():
    assert {"kd", "ce", "fitnet"} <= set(LOSSES.names())
    assert LOSSES.get("kd") is KDLoss


# ---------------------------------------------------------------- FitNets
def test_fitnet_adapter_is_conv_when_channels_differ():
    s, t = torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4)
    a = make_adapter(s, t)
    assert isinstance(a, nn.Conv2d)
    assert (a.in_channels, a.out_channels, a.kernel_size, a.bias) == (8, 16, (1, 1), None)
    assert a(s).shape == t.shape


def test_fitnet_adapter_identity_when_channels_match_and_linear_for_vectors():
    assert isinstance(make_adapter(torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 2, 2)), nn.Identity)
    lin = make_adapter(torch.zeros(2, 6), torch.zeros(2, 10))
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (6, 10)
    with pytest.raises(DistillpruneError):
        make_adapter(torch.zeros(2, 8, 4, 4), torch.zeros(2, 8))


def test_fitnet_setup_builds_adapters_per_pair():
    loss = FitNetLoss([["a", "x"], "b"])
    assert loss.taps == [("a", "x"), ("b", "b")]
    s = Outputs(torch.zeros(2, 3), {"a": torch.zeros(2, 4, 4, 4), "b": torch.zeros(2, 8, 2, 2)})
    t = Outputs(torch.zeros(2, 3), {"x": torch.zeros(2, 12, 4, 4), "b": torch.zeros(2, 8, 2, 2)})
    loss.setup(s, t)
    assert isinstance(loss.adapters[0], nn.Conv2d) and loss.adapters[0].out_channels == 12
    assert isinstance(loss.adapters[1], nn.Identity)
    assert sum(p.numel() for p in loss.parameters()) == 4 * 12


def test_fitnet_mse_identity_case():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    fs2, ft2 = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    loss = FitNetLoss([["s1", "t1"], ["s2", "t2"]])
    s = Outputs(torch.zeros(2, 3), {"s1": fs, "s2": fs2})
    t = Outputs(torch.zeros(2, 3), {"t1": ft, "t2": ft2})
    loss.setup(s, t)
    want = (((fs - ft) ** 2).mean() + ((fs2 - ft2) ** 2).mean()) / 2  # mean over the pairs
    assert float(loss(s, t, None)) == pytest.approx(float(want), rel=1e-6)
    same = Outputs(torch.zeros(2, 3), {"s1": ft, "s2": ft2})
    assert float(loss(same, t, None)) == pytest.approx(0.0, abs=1e-7)


def test_fitnet_pools_larger_student_maps():
    loss = FitNetLoss(["f"])
    fs = torch.arange(16.0).view(1, 1, 4, 4)
    ft = torch.zeros(1, 1, 2, 2)
    s, t = Outputs(torch.zeros(1, 2), {"f": fs}), Outputs(torch.zeros(1, 2), {"f": ft})
    loss.setup(s, t)
    pooled = torch.nn.functional.avg_pool2d(fs, 2)
    assert float(loss(s, t, None)) == pytest.approx(float((pooled**2).mean()))


def test_fitnet_needs_pairs():
    with pytest.raises(ValueError):
        FitNetLoss([])


# ---------------------------------------------------------------- Distiller
def _student_teacher():
    return tiny_digits_cnn(seed=1), tiny_digits_cnn(seed=2)


def test_distiller_gradients_reach_student_not_teacher():
    student, teacher = _student_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = Distiller.from_specs(teacher, [{"name": "kd", "temperature": 2.0, "alpha": 0.5}])
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    student.train()
    d.attach(student, x[:2])
    loss, logits = d(student, x, y)
    assert logits.shape == (6, 10) and loss.requires_grad
    loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in student.named_parameters()
        if n.startswith(("conv1", "fc"))
    )
    for p in teacher.parameters():
        assert p.requires_grad is False
        assert p.grad is None
    assert not teacher.training  # frozen: eval mode, BN statistics untouched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the teacher is not a submodule: its weights are neither trained nor saved with the objective
    assert not any(k.startswith("teacher") for k in d.state_dict())
    assert list(d.trainable()) == []
    d.detach()


def test_distiller_weighted_sum_matches_manual():
    student, teacher = _student_teacher()
    student.eval()
    d = Distiller.from_specs(
        teacher, [{"name": "kd", "weight": 0.5, "temperature": 2.0, "alpha": 1.0}, {"name": "ce", "weight": 2.0}]
    )
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    d.attach(student, x[:2])
    loss, _ = d(student, x, y)
    with torch.no_grad():
        zs, zt = student(x), teacher(x)
    want = 0.5 * soft_kl(zs, zt, 2.0) + 2.0 * torch.nn.functional.cross_entropy(zs, y)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)


def test_distiller_fitnet_taps_and_adapter_are_trainable():
    student = tiny_digits_cnn(seed=1)
    torch.manual_seed(3)
    from distillprune.models import build_model

    teacher = build_model("digits_cnn", 10, (1, 8, 8), widths=(8, 16, 32), blocks=(1, 1, 1))
    d = Distiller.from_specs(teacher, [{"name": "fitnet", "pairs": [["layer3", "layer3"]]}])
    x = torch.randn(4, 1, 8, 8)
    d.attach(student, x[:2])
    adapters = list(d.trainable())
    assert len(adapters) == 1 and adapters[0].shape == (32, 16, 1, 1)  # 16 student -> 32 teacher channels
    loss, _ = d(student, x, None)
    loss.backward()
    assert adapters[0].grad is not None and student.conv1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    d.detach()
    # detach removed the hooks: forwards no longer record features
    assert d._s_taps is None
    assert not student.layer3._forward_hooks and not teacher.layer3._forward_hooks


def test_distiller_rejects_class_count_mismatch():
    student = tiny_digits_cnn(seed=1, num_classes=10)
    teacher = tiny_digits_cnn(seed=2, num_classes=7)
    d = Distiller.from_specs(teacher, [{"name": "kd"}])
    with pytest.raises(DataError, match="classes"):
        d.attach(student, torch.randn(2, 1, 8, 8))


def test_cross_entropy_objective_needs_labels():
    model = tiny_digits_cnn()
    ce = CrossEntropy()
    x = torch.randn(3, 1, 8, 8)
    loss, logits = ce(model, x, torch.tensor([0, 1, 2]))
    expected = torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([0, 1, 2]))
    assert float(loss.detach()) == pytest.approx(float(expected))
    with pytest.raises(DataError, match="labels"):
        ce(model, x, None)
