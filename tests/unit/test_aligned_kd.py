"""Channel-aligned feature distillation: the kept-channel map of a pruned teacher and the ``aligned`` loss."""

from __future__ import annotations

import copy

import pytest
import torch
from unit_helpers import random_bundle, randomise_bn, tiny_resnet, uniform_cut

from distillprune.distill.distiller import Distiller
from distillprune.distill.losses.aligned import AlignedFeatureLoss, stages
from distillprune.errors import DistillpruneError
from distillprune.prune.alignment import kept_channels
from distillprune.prune.config import PruneConfig, WidthConfig
from distillprune.prune.history import ChannelsOp
from distillprune.prune.session import PruneSession
from distillprune.train.config import RuntimeConfig
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainers import fit_trainer

SHAPE = (3, 8, 8)
RT = RuntimeConfig(device="cpu", progress=False, tensorboard=False)


def dense(seed: int = 0) -> torch.nn.Module:
    return randomise_bn(tiny_resnet(seed), seed).eval()


def cut(model: torch.nn.Module, ratio: float, steps: int = 1) -> list[ChannelsOp]:
    """``steps`` width steps by L2 norm of random weights (so the kept channels are not the first ones)."""
    cfg = WidthConfig(ratio=ratio, importance="l2", round_to=None)
    return uniform_cut(model, cfg, torch.zeros(1, *SHAPE), steps)


def distiller(teacher, pairs, kept=None) -> Distiller:
    d = Distiller(teacher, [(1.0, AlignedFeatureLoss(pairs))])
    if kept is not None:
        d.align(lambda: kept)
    return d


def bn_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_indices_compose_across_two_cuts():
    teacher = dense()
    student = copy.deepcopy(teacher)
    ops = cut(student, 0.5, steps=2)
    kept = kept_channels(teacher, ops, SHAPE)
    sd, td = student.state_dict(), teacher.state_dict()
    narrowed = 0
    for name in bn_layers(teacher):  # every BatchNorm of the student is the teacher's at the kept indices
        idx = kept[name]
        narrowed += len(idx) < teacher.get_submodule(name).num_features
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(sd[f"{name}.{key}"], td[f"{name}.{key}"][idx]), (name, key)
    assert narrowed >= 3
    # composing by hand: the second cut's indices are relative to the first cut's survivors
    one = kept_channels(teacher, ops[:1], SHAPE)["bn1"]
    assert set(kept["bn1"].tolist()) < set(one.tolist())
    assert kept_channels(teacher, [], SHAPE)["bn1"].tolist() == list(range(16))


def test_zero_after_an_identity_cut_and_exact_on_a_cut_layer():
    teacher = dense()
    same = copy.deepcopy(teacher)
    x = torch.randn(4, *SHAPE)
    d = distiller(teacher, ["layer1", "layer2"], kept_channels(teacher, [], SHAPE))
    d.attach(same, x)
    assert float(d(same, x, None)[0].detach()) < 1e-10
    # after a real cut the stem's BatchNorm output is the teacher's on the kept channels, exactly
    student = copy.deepcopy(teacher)
    kept = kept_channels(teacher, cut(student, 0.5), SHAPE)
    d = distiller(teacher, ["bn1"], kept)
    d.attach(student, x)
    assert student.bn1.num_features < 16 and float(d(student, x, None)[0].detach()) < 1e-10
    wrong = {k: torch.arange(len(v)) for k, v in kept.items()}  # the first channels: not the kept ones
    d = distiller(teacher, ["bn1"], wrong)
    d.attach(student, x)
    assert float(d(student, x, None)[0].detach()) > 1e-2


def test_positive_with_gradients_when_student_differs():
    teacher = dense()
    student = copy.deepcopy(teacher)
    kept = kept_channels(teacher, cut(student, 0.5), SHAPE)
    d = distiller(teacher, None, kept)  # default taps: the stages
    x = torch.randn(6, *SHAPE)
    student.train()
    d.attach(student, x[:2])
    assert [s for s, _ in d.losses[0].taps] == ["layer1", "layer2"] == stages(teacher)
    loss, _ = d(student, x, None)
    loss.backward()
    assert float(loss) > 1e-3
    assert all(p.grad is not None for p in student.layer1.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_width_mismatch_without_indices_is_a_clear_error():
    teacher = dense()
    student = copy.deepcopy(teacher)
    cut(student, 0.5)
    d = distiller(teacher, ["layer1"])
    with pytest.raises(DistillpruneError, match="no kept-channel indices"):
        d.attach(student, torch.randn(2, *SHAPE))


def test_prune_session_aligns_after_every_cut():
    torch.manual_seed(0)
    model = dense()
    data = random_bundle(64, 16, shape=SHAPE)
    cfg = PruneConfig(
        width={"ratio": 0.5, "round_to": None},
        steps=2,
        epochs_per_step=1,
        distill={"losses": [{"name": "kd"}, {"name": "aligned", "weight": 0.5}]},
    )
    ctx = Context(RT, LoaderOptions(16, 0))
    session = PruneSession(model, cfg, data, trainer=fit_trainer(cfg, data, ctx), context=ctx)
    report = session.run()
    assert report.training is not None and report.training.epochs == 2
    loss = session.objective.losses[1]
    assert isinstance(loss, AlignedFeatureLoss) and loss.taps == [("layer1", "layer1"), ("layer2", "layer2")]
    assert all(idx is not None for idx in loss.index)  # both stages lost channels: compared on the kept ones
    assert [len(idx) for idx in loss.index] == [model.layer1[0].bn2.num_features, model.layer2[0].bn2.num_features]
    assert model.layer1[0].bn2.num_features < 16
