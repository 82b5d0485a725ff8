"""Progress outside a terminal: plain lines (stage, step/total, loss, img/s, ETA) every ~30 s or 5 % of the steps,
on stdout and in the ``distillprune.progress`` log; per-step scalars every N steps."""

from __future__ import annotations

import logging

import pytest
import torch

from distillprune.train.progress import Tracker, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_plain_line_every_five_percent_or_thirty_seconds_with_loss_rate_and_eta():
    clock, lines = Clock(), []
    t = Tracker("2:prune/step1", 1000, plain=True, write=lines.append, clock=clock)
    for i in range(1000):
        clock.t += 0.5  # 2 steps a second, 64 images a step
        t(1, loss=torch.tensor(2.0 - i / 1000), images=64)
    # the first step, then every 50 steps (5 %, 25 s apart), and the last
    assert len(lines) == 1 + 1000 // 50
    first, mid, last = lines[0], lines[10], lines[-1]
    assert first.startswith("2:prune/step1  step 1/1000 (0%)  loss 2.0000")
    assert "step 500/1000 (50%)" in mid and "128 img/s" in mid and "ETA 4:10" in mid and "loss 1.50" in mid
    assert "step 1000/1000 (100%)" in last and "ETA 0:00" in last


def test_slow_steps_give_a_line_every_thirty_seconds():
    clock, lines = Clock(), []
    t = Tracker("1:distill", 10_000, plain=True, write=lines.append, clock=clock)
    for _ in range(300):
        clock.t += 1.0
        t(1, loss=1.0, images=8)
    assert len(lines) == 10  # 300 steps are 3 % of them: the clock decides (steps 1, 31, 61... 271)
    assert lines[1].startswith("1:distill  step 31/10000") and "elapsed 0:31" in lines[1]
    assert "ETA 2:42:09" in lines[-1]


def test_scalars_every_n_steps_read_the_loss_only_then():
    clock, got = Clock(), []
    t = Tracker("s", 200, scalars=lambda tag, step, v: got.append((tag, step, v)), scalar_every=50, clock=clock)
    for _ in range(200):
        clock.t += 0.1
        t(1, loss=torch.tensor(0.5), lr=0.01, images=10)
    assert [s for _, s, _ in got] == [50, 100, 150, 200] and got[0][0] == "s/steps"
    assert got[1][2] == {"img_s": pytest.approx(100.0), "loss": 0.5, "lr": 0.01}


def test_outside_a_terminal_progress_prints_and_logs(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="distillprune.progress"), progress_bar(True, "3:quant", 4) as bar:
        for _ in range(4):
            bar(1, loss=0.25, images=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("3:quant  step 1/4") and out[-1].startswith("3:quant  step 4/4 (100%)  loss 0.2500")
    assert [r.getMessage() for r in caplog.records] == out


def test_disabled_progress_is_silent(capsys):
    with progress_bar(False, "x", 3) as bar:
        for _ in range(3):
            bar(1, loss=1.0)
    assert capsys.readouterr().out == ""


def test_training_writes_step_scalars_and_plain_lines_outside_a_terminal(digits_bundle, tmp_path, capsys, monkeypatch):
    from unit_helpers import tiny_digits_cnn

    from distillprune.data.base import DataBundle
    from distillprune.distill.distiller import CrossEntropy
    from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
    from distillprune.train.logging import RunLogger

    b = digits_bundle
    data = DataBundle(b.train.subset(128), b.test.subset(64), b.num_classes, b.classes, b.mean, b.std, "digits")
    got = []
    monkeypatch.setattr(RunLogger, "scalars", lambda self, tag, step, values: got.append((tag, step, values)))
    logger = RunLogger(tmp_path, tensorboard=False)
    rt = RuntimeConfig(device="cpu", progress=True, tensorboard=False)
    settings = FitSettings(13, OptimizerConfig(lr=0.05), ScheduleConfig())
    fit(
        tiny_digits_cnn(seed=0),
        data,
        settings,
        CrossEntropy(),
        runtime=rt,
        batch_size=32,
        logger=logger,
        desc="1:train",
    )
    assert [s for _, s, _ in got] == [50]  # 13 epochs x 4 steps: one scalar record at step 50
    tag, _, values = got[0]
    assert tag == "1:train/steps" and set(values) == {"loss", "lr", "img_s"} and values["loss"] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1:train  step 1/52") and out[-1].startswith("1:train  step 52/52 (100%)  loss ")
