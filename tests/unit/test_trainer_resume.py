"""The training loop: an interrupted-then-resumed run equals the uninterrupted one; divergence; schedules."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from unit_helpers import tiny_digits_cnn

from distillprune.data.base import DataBundle
from distillprune.distill.distiller import CrossEntropy, Distiller
from distillprune.errors import CheckpointError, DataError, TrainingDiverged
from distillprune.models import build_model
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, evaluate, fit
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.logging import RunLogger
from distillprune.train.schedules import lr_factor
from distillprune.train.trainer import FitRun

RT = RuntimeConfig(device="cpu", progress=False, tensorboard=False)
BATCH = 32
N_TRAIN = 192  # 6 steps an epoch (drop_last)
STEPS = N_TRAIN // BATCH


@pytest.fixture(scope="module")
def small(digits_bundle) -> DataBundle:
    b = digits_bundle
    return DataBundle(b.train.subset(N_TRAIN), b.test.subset(120), b.num_classes, b.classes, b.mean, b.std, "digits")


def settings(epochs: int = 4, lr: float = 0.05, schedule: str = "onecycle", **opt) -> FitSettings:
    return FitSettings(epochs, OptimizerConfig(lr=lr, **opt), ScheduleConfig(name=schedule, final_lr_fraction=0.05))


def objective(kind: str):
    if kind == "ce":
        return CrossEntropy(label_smoothing=0.1)
    # kd plus a FitNets hint whose 1x1 adapter (trainable, randomly initialised) must be restored on resume
    torch.manual_seed(9)
    teacher = build_model("digits_cnn", 10, (1, 8, 8), widths=(8, 16, 24), blocks=(1, 1, 1))
    return Distiller.from_specs(
        teacher,
        [
            {"name": "kd", "temperature": 2.0, "alpha": 0.7},
            {"name": "fitnet", "weight": 0.1, "pairs": [["layer3", "layer3"]]},
        ],
    )


def run(data, ckpt_dir=None, resume=False, on_step=None, kind="ce", epochs=4):
    model = tiny_digits_cnn(seed=0)
    obj = objective(kind)
    torch.manual_seed(123)  # the adapter's initialisation
    hist = fit(
        model,
        data,
        settings(epochs),
        obj,
        context=Context(RT, LoaderOptions(batch_size=BATCH, seed=3, crop_padding=1, hflip=True)),
        run=FitRun(ckpt_dir=ckpt_dir, resume=resume, on_step=on_step),
    )
    return model, hist, obj


class Interrupt:
    """on_step callback that raises KeyboardInterrupt after ``at`` optimizer steps (mid-epoch)."""

    def __init__(self, at: int):
        self.at, self.n = at, 0

    def __call__(self, model: nn.Module) -> None:
        self.n += 1
        if self.n == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["ce", "distill"])
def test_resume_after_mid_epoch_interrupt_reproduces_uninterrupted_run(small, tmp_path, kind):
    ref, ref_hist, ref_obj = run(small, tmp_path / "ref", kind=kind)
    assert [h["epoch"] for h in ref_hist] == [1, 2, 3, 4]

    stop = Interrupt(2 * STEPS + STEPS // 2)  # in the middle of epoch 3
    with pytest.raises(KeyboardInterrupt):
        run(small, tmp_path / "cut", on_step=stop, kind=kind)
    meta = json.loads((tmp_path / "cut" / "last.json").read_text())
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    assert not list((tmp_path / "cut").glob("*.tmp"))

    resumed, hist, obj = run(small, tmp_path / "cut", resume=True, kind=kind)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert [h["test_acc"] for h in hist] == [h["test_acc"] for h in ref_hist]
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist], abs=1e-6)
    if kind == "distill":
        (a,), (b,) = list(ref_obj.trainable()), list(obj.trainable())
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_differs_from_restart_without_checkpoint(small, tmp_path):
    """Sanity for the test above: a run that is NOT resumed (fresh weights, 2 epochs fewer) ends elsewhere."""
    ref, _, _ = run(small, tmp_path / "ref")
    short, _, _ = run(small, tmp_path / "short", epochs=2)
    assert not torch.allclose(ref.fc.weight, short.fc.weight, atol=1e-4)


def test_resume_of_a_finished_run_is_a_no_op(small, tmp_path):
    ref, hist, _ = run(small, tmp_path / "r")
    again, hist2, _ = run(small, tmp_path / "r", resume=True)
    assert hist2 == hist
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), again.state_dict().values(), strict=True))


def test_resume_without_checkpoint_starts_from_scratch(small, tmp_path):
    ref, hist, _ = run(small, None, epochs=2)
    fresh, hist2, _ = run(small, tmp_path / "empty", resume=True, epochs=2)
    assert [h["test_acc"] for h in hist2] == [h["test_acc"] for h in hist]
    assert torch.equal(ref.fc.weight, fresh.fc.weight)


def test_corrupt_resume_checkpoint_raises(small, tmp_path):
    run(small, tmp_path / "c", epochs=1)
    (tmp_path / "c" / "last.safetensors").write_bytes(b"garbage" * 3)
    with pytest.raises(CheckpointError, match="cannot resume"):
        run(small, tmp_path / "c", resume=True, epochs=2)


def test_training_learns_and_history_is_complete(digits_bundle):
    model = tiny_digits_cnn()
    hist = fit(
        model,
        digits_bundle,
        FitSettings(2, OptimizerConfig(lr=0.1), ScheduleConfig()),
        CrossEntropy(),
        context=Context(RT, LoaderOptions(batch_size=BATCH)),
    )
    assert len(hist) == 2
    for h in hist:
        assert {"epoch", "loss", "train_acc", "lr", "seconds", "images_per_s", "test_acc"} <= set(h)
        assert 0.0 <= h["test_acc"] <= 100.0 and 0.0 <= h["train_acc"] <= 100.0
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["test_acc"] > 60.0  # far above chance (10 %): digits is easy
    assert hist[-1]["test_acc"] == pytest.approx(evaluate(model, digits_bundle, runtime=RT))
    assert not model.training


def test_nan_loss_raises_training_diverged(small):
    model = tiny_digits_cnn()
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(
            model,
            small,
            settings(3, lr=1e30, schedule="constant"),
            CrossEntropy(),
            context=Context(RT, LoaderOptions(batch_size=BATCH)),
        )

    class NaNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        fit(NaNNet(), small, settings(1), CrossEntropy(), context=Context(RT, LoaderOptions(batch_size=BATCH)))


def test_adamw_and_grad_clip(small):
    model = tiny_digits_cnn()
    before = model.fc.weight.detach().clone()
    fs = FitSettings(
        1, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01), ScheduleConfig(name="constant"), grad_clip=0.5
    )
    hist = fit(model, small, fs, CrossEntropy(), context=Context(RT, LoaderOptions(batch_size=BATCH)))
    assert hist[0]["lr"] == pytest.approx(1e-3)
    assert not torch.equal(model.fc.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_labelled_training_needs_labels(small):
    with pytest.raises(DataError, match="labels"):
        fit(
            tiny_digits_cnn(),
            small.without_labels(),
            settings(1),
            CrossEntropy(),
            context=Context(RT, LoaderOptions(batch_size=BATCH)),
        )


def test_run_logger_writes_jsonl(small, tmp_path):
    logger = RunLogger(tmp_path / "run", tensorboard=False)
    model = tiny_digits_cnn()
    fit(
        model,
        small,
        settings(2),
        CrossEntropy(),
        context=Context(RT, LoaderOptions(batch_size=BATCH)),
        run=FitRun(logger=logger, desc="t"),
    )
    logger.close()
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["tag"], r["step"]) for r in recs] == [("t", 1), ("t", 2)]
    assert not (tmp_path / "run" / "tb").exists()


# ---------------------------------------------------------------- evaluate
def test_evaluate_is_a_percentage(small):
    model = tiny_digits_cnn().train()
    acc = evaluate(model, small, runtime=RT)
    assert 0.0 <= acc <= 100.0
    assert model.training  # restored


def test_evaluate_counts_exactly(small):
    model = tiny_digits_cnn()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[3] = 1.0  # always predicts class 3
    want = 100.0 * float((small.test.y == 3).float().mean())
    assert evaluate(model, small, batch_size=7, runtime=RT) == pytest.approx(want)
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, small.without_labels(), split=small.without_labels().train, runtime=RT)


# ---------------------------------------------------------------- schedules
def test_onecycle_schedule():
    cfg = ScheduleConfig(name="onecycle", warmup_fraction=0.2, final_lr_fraction=0.04)
    total = 100
    f = [lr_factor(cfg, s, total) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1)
    assert max(f) == pytest.approx(1.0) and f.index(max(f)) == 20
    assert all(b >= a for a, b in zip(f[:21], f[1:21], strict=False))  # warm-up rises
    assert all(b <= a for a, b in zip(f[20:], f[21:], strict=False))  # then anneals
    assert f[-1] == pytest.approx(0.04)
    assert lr_factor(cfg, 500, total) == pytest.approx(0.04)  # clamped past the end


def test_cosine_and_constant_schedules():
    cfg = ScheduleConfig(name="cosine", final_lr_fraction=0.1)
    assert lr_factor(cfg, 0, 50) == pytest.approx(1.0)
    assert lr_factor(cfg, 25, 50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 50, 50) == pytest.approx(0.1)
    const = ScheduleConfig(name="constant", final_lr_fraction=0.1)
    assert {lr_factor(const, s, 10) for s in range(11)} == {1.0}


def test_trainer_applies_the_schedule(small):
    hist = fit(
        tiny_digits_cnn(),
        small,
        FitSettings(2, OptimizerConfig(lr=0.1), ScheduleConfig(name="cosine", final_lr_fraction=0.0)),
        CrossEntropy(),
        context=Context(RT, LoaderOptions(batch_size=BATCH)),
    )
    total = 2 * STEPS
    assert hist[0]["lr"] == pytest.approx(
        0.1 * lr_factor(ScheduleConfig(name="cosine", final_lr_fraction=0.0), STEPS - 1, total)
    )
    assert hist[1]["lr"] < hist[0]["lr"]
