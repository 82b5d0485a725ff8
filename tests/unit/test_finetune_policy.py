"""A fine-tune keeps what it started with (issue 31): the regime's defaults, function-preserving BatchNorm
re-normalisation, frozen statistics, the held-out keep-best checks (a run that only makes the model worse ends
on its start), their resume, and the feature-mimicking loss."""

from __future__ import annotations

import copy

import pytest
import torch
from unit_helpers import randomise_bn, tiny_digits_cnn, tiny_resnet

from distillprune.core.config import validate
from distillprune.data.base import DataBundle, TensorLoader
from distillprune.distill.distiller import CrossEntropy, Distiller
from distillprune.distill.losses.base import Outputs
from distillprune.errors import DistillpruneError
from distillprune.train import policy
from distillprune.train.batchnorm import norms, renormalize, set_statistics_frozen
from distillprune.train.config import KeepBestConfig, OptimizerConfig, RuntimeConfig, ScheduleConfig, TrainingOptions
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.guard import HOLDOUT_SEED, holdout
from distillprune.train.trainer import FitRun, FitSettings, fit

RT = RuntimeConfig(device="cpu", progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def small(digits_bundle) -> DataBundle:
    b = digits_bundle
    return DataBundle(b.train.subset(400), b.test.subset(120), b.num_classes, b.classes, b.mean, b.std, "digits")


@pytest.fixture(scope="module")
def trained(small):
    """A tiny digits CNN trained to well above chance (the start a fine-tune must not lose)."""
    model = tiny_digits_cnn(seed=0)
    fit(
        model,
        small,
        FitSettings(4, OptimizerConfig(lr=0.1), ScheduleConfig()),
        CrossEntropy(),
        context=Context(RT, LoaderOptions(seed=1)),
    )
    return model.eval()


# ---------------------------------------------------------------------------------------- the regime
def test_regime_defaults_are_pinned():
    tune = policy.settings(TrainingOptions(), 1.0, "finetune")
    assert tune.optimizer.lr == 0.01 and tune.optimizer.name == "sgd"
    assert (tune.schedule.name, tune.schedule.warmup_fraction, tune.schedule.final_lr_fraction) == ("cosine", 0, 0)
    assert tune.keep_best is not None and tune.keep_best.per_epoch == 4 and tune.keep_best.samples == 2000
    assert tune.bn_renormalize and tune.bn_frozen == policy.FINETUNE_BN_FROZEN
    adam = policy.settings(validate(TrainingOptions, {"optimizer": {"name": "adamw"}}), 1.0, "finetune")
    assert adam.optimizer.lr == 1e-4
    scratch = policy.settings(TrainingOptions(), 2.0, "scratch")
    assert scratch.optimizer.lr == 0.1 and scratch.schedule.name == "onecycle"
    assert scratch.schedule.warmup_fraction == 0.15
    assert scratch.keep_best is None and not scratch.bn_renormalize and scratch.bn_frozen == 0


def test_what_is_given_wins_over_the_regime():
    raw = {
        "optimizer": {"lr": 0.2},
        "schedule": {"name": "onecycle"},
        "keep_best": {"enabled": False},
        "batchnorm": {"renormalize": False, "frozen": 0.5},
    }
    s = policy.settings(validate(TrainingOptions, raw), 1.0, "finetune")
    assert (s.optimizer.lr, s.schedule.name, s.keep_best, s.bn_renormalize, s.bn_frozen) == (
        0.2,
        "onecycle",
        None,
        False,
        0.5,
    )
    opts = validate(TrainingOptions, {"regime": "scratch"})
    assert policy.regime_of(opts, "finetune") == "scratch"
    assert policy.regime_of(TrainingOptions(), "finetune") == "finetune"
    with pytest.raises(DistillpruneError, match="learning rate"):
        FitSettings(1, OptimizerConfig(), ScheduleConfig())


# ---------------------------------------------------------------------------------------- BatchNorm
def _batches(data: DataBundle, n: int = 4, bs: int = 64) -> list[torch.Tensor]:
    ld = TensorLoader(data.train, bs, data.mean, data.std, shuffle=True, seed=3)
    return [x for _, (x, _) in zip(range(n), ld, strict=False)]


def test_renormalize_keeps_the_function_and_matches_train_mode(small):
    model = randomise_bn(tiny_resnet(seed=1, in_ch=1), seed=2).eval()  # statistics far from the data's
    batches = _batches(small)
    x = torch.cat(batches)
    with torch.no_grad():
        before = model(x)
        gap_before = (copy.deepcopy(model).train()(x) - before).abs().mean()  # (train mode moves the statistics)
    assert renormalize(model, batches) == len(norms(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)  # eval mode: the same function
        gap_after = (copy.deepcopy(model).train()(x) - before).abs().mean()  # train mode now matches eval mode
    assert gap_after < 0.05 * gap_before


def test_frozen_statistics_do_not_move_but_scales_train(small):
    model = tiny_digits_cnn(seed=0)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    settings = FitSettings(1, OptimizerConfig(lr=0.1), ScheduleConfig(), bn_frozen=1.0)
    fit(model, small, settings, CrossEntropy(), context=Context(RT, LoaderOptions(seed=0)))
    now = model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in stats.items())
    bn = norms(model)[0]
    assert not torch.equal(bn.weight, torch.ones_like(bn.weight))  # gamma trained
    set_statistics_frozen(model.train(), True)
    assert not any(m.training for m in norms(model)) and model.training
    set_statistics_frozen(model, False)
    assert all(m.training for m in norms(model))


# ---------------------------------------------------------------------------------------- keep best
class Ascent(CrossEntropy):
    """Gradient ascent on the cross-entropy: every step makes the model worse (a constructed bad fine-tune)."""

    def __call__(self, model, x, y):
        loss, logits = super().__call__(model, x, y)
        return -loss, logits


def _keep(per_epoch: int = 4, samples: int = 40) -> KeepBestConfig:
    return KeepBestConfig(enabled=True, per_epoch=per_epoch, samples=samples)


def test_a_fine_tune_that_only_hurts_ends_on_its_start(small, trained):
    model = copy.deepcopy(trained)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FitSettings(1, OptimizerConfig(lr=0.5), ScheduleConfig(name="constant"), keep_best=_keep())
    hist = fit(model, small, settings, Ascent(), context=Context(RT, LoaderOptions(seed=0)))
    last = hist[-1]
    assert len(last["checks"]) == 1 + 4  # the start, then four points in the epoch
    assert last["kept"]["step"] == 0 and "never beat its start" in last["note"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    assert last["checks"][-1]["val_top1"] < last["checks"][0]["val_top1"]


def test_keep_best_keeps_a_later_point_when_training_helps(small):
    model = tiny_digits_cnn(seed=0)
    settings = FitSettings(2, OptimizerConfig(lr=0.1), ScheduleConfig(), keep_best=_keep(per_epoch=2))
    hist = fit(model, small, settings, CrossEntropy(), context=Context(RT, LoaderOptions(seed=0)))
    checks = hist[-1]["checks"]
    assert [c["step"] for c in checks][0] == 0 and len(checks) == 5
    assert hist[-1]["kept"]["step"] > 0 and "note" not in hist[-1]
    best = max(checks, key=lambda c: (c["val_top1"], -c["val_loss"]))
    assert hist[-1]["kept"] == best


def test_held_out_images_are_never_trained_on(small):
    train, val = holdout(small.train, 40)
    assert len(val) == 40 and len(train) == len(small.train) - 40
    rows = {tuple(r.flatten().tolist()) for r in small.train.x}
    assert {tuple(r.flatten().tolist()) for r in train.x} | {tuple(r.flatten().tolist()) for r in val.x} == rows
    assert not {tuple(r.flatten().tolist()) for r in train.x} & {tuple(r.flatten().tolist()) for r in val.x}
    again_train, again_val = holdout(small.train, 40)  # the same images every time (every stage of a run)
    assert torch.equal(again_val.x, val.x) and HOLDOUT_SEED
    assert len(holdout(small.train, 10_000)[1]) == len(small.train) // 10  # at most a tenth


def test_keep_best_survives_a_resume(small, trained, tmp_path):
    def run(ckpt, resume, stop=None):
        model = copy.deepcopy(trained)
        count = {"n": 0}

        def on_step(_):
            count["n"] += 1
            if stop is not None and count["n"] == stop:
                raise KeyboardInterrupt

        settings = FitSettings(2, OptimizerConfig(lr=0.5), ScheduleConfig(name="constant"), keep_best=_keep(2))
        hist = fit(
            model,
            small,
            settings,
            Ascent(),
            context=Context(RT, LoaderOptions(seed=0)),
            run=FitRun(ckpt_dir=ckpt, resume=resume, on_step=on_step),
        )
        return model, hist

    whole, hist = run(None, False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, False, stop=8)  # killed in the second epoch (5 batches an epoch)
    resumed, hist_r = run(tmp_path, True)
    assert hist_r[-1]["checks"] == hist[-1]["checks"] and hist_r[-1]["kept"] == hist[-1]["kept"]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------- mimic
def test_mimic_reduces_the_stage_error_and_freezes_the_head(small):
    teacher = tiny_digits_cnn(seed=0)
    fit(
        teacher,
        small,
        FitSettings(3, OptimizerConfig(lr=0.1), ScheduleConfig()),
        CrossEntropy(),
        context=Context(RT, LoaderOptions(seed=1)),
    )
    teacher.eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    head = {k: v.clone() for k, v in student.fc.state_dict().items()}
    objective = Distiller.from_specs(teacher, [{"name": "mimic"}])
    x = _batches(small, 2)[0]

    def error() -> float:
        objective.attach(student, x)
        with torch.no_grad():
            s, t = objective._outputs(student.eval(), x, live=True)
            value = float(objective.losses[0](s, t, None))
        objective.detach()
        return value

    before = error()
    settings = FitSettings(2, OptimizerConfig(lr=0.02), ScheduleConfig(name="cosine"))
    fit(student, small, settings, objective, context=Context(RT, LoaderOptions(seed=0)))
    assert error() < 0.5 * before
    assert all(torch.equal(v, student.fc.state_dict()[k]) for k, v in head.items())  # the head did not train
    assert all(p.requires_grad for p in student.fc.parameters())  # ... and trains again after the run


def test_mimic_learns_an_adapter_where_channels_do_not_align():
    from distillprune.distill.losses.mimic import MimicLoss

    loss = MimicLoss(pairs=["f"])
    s = Outputs(torch.zeros(2, 3), {"f": torch.randn(2, 4, 5, 5)})
    t = Outputs(torch.zeros(2, 3), {"f": torch.randn(2, 8, 5, 5)})
    loss.setup(s, t)
    assert isinstance(loss.adapters[0], torch.nn.Conv2d) and loss.index == [None]
    assert float(loss(s, t, None).detach()) > 0
    with pytest.raises(ValueError, match="freeze_head"):
        MimicLoss(freeze_head="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- recoverability
def test_recoverability_ranks_a_redundant_block_first(small):
    from distillprune.prune.depth import removable_blocks
    from distillprune.prune.recoverability import block_errors, by_recoverability

    model = randomise_bn(tiny_resnet(seed=3, widths=(16, 16), blocks=(3, 2), in_ch=1), seed=4).eval()
    blocks = removable_blocks(model)
    redundant = blocks[1]
    with torch.no_grad():  # its branch adds nothing: the block is the identity on its (ReLU'd) input
        model.get_submodule(redundant).bn2.weight.zero_()
        model.get_submodule(redundant).bn2.bias.zero_()
    errors = block_errors(model, blocks, _batches(small, 2))
    assert errors[redundant] < 1e-6 < min(e for b, e in errors.items() if b != redundant)
    saved = {b: 1.0 for b in blocks}
    assert by_recoverability(errors, saved)[0] == redundant
    cheap = {**saved, redundant: 1e-9}  # the same error, but its removal saves (almost) nothing
    assert by_recoverability({**errors, redundant: 0.01}, cheap)[-1] == redundant


# ---------------------------------------------------------------------------------------- trainable
def test_near_cuts_names_the_cut_layers_and_the_layer_after_a_removed_block():
    from distillprune.prune.depth import remove_block
    from distillprune.train.trainable import first_parameters, near_cuts

    teacher = tiny_resnet(seed=0, widths=(16, 16), blocks=(3, 2), in_ch=1).eval()
    student = copy.deepcopy(teacher)
    remove_block(student, "layer1.1")
    with torch.no_grad():  # layer2.0.conv1 loses input channels (a width cut, by hand)
        conv = student.layer2[0].conv1
        conv.weight = torch.nn.Parameter(conv.weight[:, :8].clone())
        conv.in_channels = 8
    found = {n for n, m in student.named_modules() if any(m is x for x in near_cuts(student, teacher))}
    assert found == {"layer2.0.conv1", "layer1.2.conv1"}
    first = {id(p) for p in first_parameters(student, "near_cuts", teacher)}
    assert id(student.layer1[2].conv1.weight) in first and id(student.layer1[0].conv1.weight) not in first
    assert id(student.layer1[0].bn1.weight) in first  # norms always
    norms_only = {id(p) for p in first_parameters(student, "norms", teacher)}
    assert id(student.layer1[2].conv1.weight) not in norms_only and first_parameters(student, "all", None) is None


def test_trainable_first_keeps_other_layers_until_its_share_is_spent(small, trained):
    model = copy.deepcopy(trained)
    before = {n: p.clone() for n, p in model.named_parameters()}
    settings = FitSettings(
        1, OptimizerConfig(lr=0.05), ScheduleConfig(name="constant"), trainable_first="norms", trainable_share=1.0
    )
    fit(model, small, settings, CrossEntropy(), context=Context(RT, LoaderOptions(seed=0)))
    norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n.endswith("bias") or id(p) in norm_params), n


def test_the_report_shows_the_curve_and_the_point_kept():
    from distillprune.report.curves import curves_svg, training_curves
    from distillprune.train.config import TrainSummary

    checks = [
        {"step": 0, "epoch": 0.0, "val_top1": 80.0, "val_loss": 0.5},
        {"step": 5, "epoch": 0.5, "val_top1": 79.0, "val_loss": 0.6},
        {"step": 10, "epoch": 1.0, "val_top1": 78.5, "val_loss": 0.7},
    ]
    note = "the fine-tune never beat its start on the held-out images: the start was kept"
    last = {"tag": "3:finetune", "step": 1, "loss": 0.4, "test_acc": 70.0, "lr": 0.0, "checks": checks}
    last.update(kept=checks[0], note=note)
    curve = training_curves([last])[0]
    assert curve.checks == [(0.0, 80.0), (0.5, 79.0), (1.0, 78.5)] and curve.kept == [(0.0, 80.0)]
    assert "held-out" in (curves_svg([last]) or "")
    summary = TrainSummary.of([{**last, "images_per_s": 10.0, "seconds": 1.0}])
    assert summary is not None and summary.kept == [checks[0]] and summary.note == note
