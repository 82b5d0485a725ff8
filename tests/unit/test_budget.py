"""The training budget as the unit: fractional epochs, several prune steps inside one epoch, one lr schedule
over a stage's steps, resume inside a fractional run, strict validation."""

from __future__ import annotations

import pytest
import torch
from unit_helpers import tiny_digits_cnn

from distillprune.core.config import validate
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import CrossEntropy
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneSession, step_span
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train.config import Span
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.schedules import lr_factor
from distillprune.train.trainer import FitRun
from distillprune.train.trainers import fit_trainer

RT = RuntimeConfig(device="cpu", progress=False, tensorboard=False)
BATCH, N_TRAIN = 32, 256  # 8 batches an epoch (drop_last)
PER_EPOCH = N_TRAIN // BATCH
SCHED = ScheduleConfig(name="onecycle", final_lr_fraction=0.05)


@pytest.fixture(scope="module")
def small(digits_bundle) -> DataBundle:
    b = digits_bundle
    return DataBundle(b.train.subset(N_TRAIN), b.test.subset(60), b.num_classes, b.classes, b.mean, b.std, "digits")


class Count:
    """on_step: counts optimizer steps; raises KeyboardInterrupt at step ``stop``."""

    def __init__(self, stop: int = 0):
        self.n, self.stop = 0, stop

    def __call__(self, model) -> None:
        self.n += 1
        if self.n == self.stop:
            raise KeyboardInterrupt


def train(data, epochs, start=0.0, span=None, on_step=None, ckpt=None, resume=False, model=None):
    model = model or tiny_digits_cnn(seed=0)
    settings = FitSettings(epochs, OptimizerConfig(lr=0.05), SCHED, start=start, schedule_span=span)
    hist = fit(
        model,
        data,
        settings,
        CrossEntropy(),
        context=Context(RT, LoaderOptions(batch_size=BATCH, seed=3, crop_padding=1)),
        run=FitRun(ckpt_dir=ckpt, resume=resume, on_step=on_step),
    )
    return model, hist


def test_fractional_epochs_train_that_share_of_the_batches(small):
    c = Count()
    _, hist = train(small, 0.25, on_step=c)
    assert c.n == PER_EPOCH // 4 and [h["epoch"] for h in hist] == [1]
    c = Count()
    _, hist = train(small, 1.0, start=0.5, on_step=c)  # the second half of epoch 1, the first of epoch 2
    assert c.n == PER_EPOCH and [h["epoch"] for h in hist] == [1, 2]


def test_quarter_runs_in_sequence_equal_one_epoch(small):
    """Four quarter-epoch runs, each where the last stopped, with one schedule over them, are one epoch."""
    whole, _ = train(small, 1)
    model = tiny_digits_cnn(seed=0)
    lrs = []
    for k in range(4):
        _, hist = train(small, 0.25, start=k / 4, span=(k / 4, 1.0), model=model)
        lrs.append(hist[-1]["lr"])
    # the optimizer's momentum restarts with every run, so the weights differ a little; the lr does not
    want = [0.05 * lr_factor(SCHED, 2 * (k + 1) - 1, PER_EPOCH) for k in range(4)]
    assert lrs == pytest.approx(want)
    assert not torch.equal(whole.fc.weight, model.fc.weight)


def test_resume_inside_a_fractional_run_reproduces_it(small, tmp_path):
    ref, ref_hist = train(small, 1.0, start=0.5, ckpt=tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        train(small, 1.0, start=0.5, ckpt=tmp_path / "cut", on_step=Count(stop=PER_EPOCH // 2 + 2))
    c = Count()
    resumed, hist = train(small, 1.0, start=0.5, ckpt=tmp_path / "cut", resume=True, on_step=c)
    assert c.n == PER_EPOCH // 2  # only epoch 2's half was left
    assert [h["epoch"] for h in hist] == [h["epoch"] for h in ref_hist] == [1, 2]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_less_than_one_batch_and_bad_values_are_errors(small):
    with pytest.raises(DistillpruneError, match="less than one batch"):
        train(small, 0.05)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(DistillpruneError, match="finite"):
            FitSettings(bad, OptimizerConfig(), SCHED)
    for bad in (-0.5, float("nan"), float("inf"), "x"):
        with pytest.raises(RecipeError, match="epochs_per_step"):
            validate(PruneConfig, {"width": {"ratio": 0.5}, "epochs_per_step": bad})


def _span(cfg: PruneConfig, k: int) -> Span | None:
    return step_span(cfg.epochs_per_step, cfg.steps, cfg.lr_span, k)


def test_step_spans():
    cfg = PruneConfig(width={"ratio": 0.5}, steps=4, epochs_per_step=0.25)
    assert [_span(cfg, k) for k in range(4)] == [None, Span(0.25), Span(0.5), Span(0.75)]
    whole = PruneConfig(width={"ratio": 0.5}, steps=2, epochs_per_step=3)
    assert _span(whole, 1) is None  # whole epochs per step: every step is a run of its own, as before
    stage = whole.model_copy(update={"lr_span": "stage"})
    assert [_span(stage, k) for k in range(2)] == [Span(0.0, (0.0, 6.0)), Span(0.0, (3.0, 6.0))]


def test_four_prune_steps_inside_one_epoch(small):
    model = tiny_digits_cnn(seed=0)
    cfg = PruneConfig(width={"ratio": 0.5, "round_to": None}, steps=4, epochs_per_step=0.25)
    c = Count()
    ctx = Context(RT, LoaderOptions(BATCH, 0))
    trainer = fit_trainer(cfg, small, ctx)

    def counted(model, objective, epochs, tag, on_step, span=None):
        return trainer(model, objective, epochs, tag, c, span)

    report = PruneSession(model, cfg, small, trainer=counted, context=ctx).run()
    assert c.n == PER_EPOCH  # four quarters: one epoch of batches in all
    assert report.training is not None and report.training.epochs == 4
    assert model.fc.in_features < 16
