"""Progress outside a terminal: plain lines (stage, step/total, loss, img/s, ETA) every ~30 s or 5 % of the steps,
on stdout and in the ``distillprune.progress`` log; per-step scalars every N steps."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from distillprune.train.context import Context, LoaderOptions
from distillprune.train.progress import Cadence, Tracker, progress_bar
from distillprune.train.trainer import FitRun


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
    t = Tracker(
        "s", 200, scalars=lambda tag, step, v: got.append((tag, step, v)), cadence=Cadence(scalar_every=50), clock=clock
    )
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
        context=Context(rt, LoaderOptions(batch_size=32)),
        run=FitRun(logger=logger, desc="1:train"),
    )
    assert [s for _, s, _ in got] == [50]  # 13 epochs x 4 steps: one scalar record at step 50
    tag, _, values = got[0]
    assert tag == "1:train/steps" and set(values) == {"loss", "lr", "img_s"} and values["loss"] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1:train  step 1/52") and out[-1].startswith("1:train  step 52/52 (100%)  loss ")


def test_rate_and_eta_count_from_the_end_of_the_first_step():
    """Seven minutes of set-up before step 1 (data, teacher cache, compile) are not training speed."""
    clock, lines = Clock(), []
    t = Tracker("1:train", 62, plain=True, write=lines.append, clock=clock)
    clock.t = 419.0  # the first step ends 6:59 after the stage started
    t(1, loss=2.0, images=64)
    for _ in range(61):
        clock.t += 2.0  # then 32 img/s
        t(1, loss=1.0, images=64)
    assert lines[0].startswith("1:train  step 1/62 (2%)  loss 2.0000  first step after 6:59 (set-up included)")
    assert "ETA" not in lines[0].split("(set-up included)")[0]
    second = lines[1]  # step 3: two steps timed since the first
    assert second.startswith("1:train  step 3/62")
    assert "32 img/s" in second and "elapsed 7:03" in second and f"ETA {_clock((62 - 3) * 2)}" in second
    assert lines[-1].endswith("ETA 0:00")


def _clock(s: float) -> str:
    from distillprune.core.progress import clock_text

    return clock_text(s)


# ---------------------------------------------------------------- phases and notes (core.progress)
def test_a_phase_line_once_past_the_threshold_then_every_period_with_share_and_eta(monkeypatch):
    from distillprune.core import progress as pg

    now = Clock()
    monkeypatch.setattr(pg.talk, "clock", now)
    monkeypatch.setattr(pg.talk, "enabled", True)
    monkeypatch.setattr(pg.talk, "stage", "2:prune")
    monkeypatch.setattr(pg.talk, "first_after", 10.0)
    monkeypatch.setattr(pg.talk, "every", 30.0)
    said: list[str] = []
    monkeypatch.setattr(pg.talk, "write", said.append)
    with pg.phase("cut 1/2"), pg.phase("recovery", unit="layers"):
        pg.expect(20)
        for _ in range(5):
            now.t += 1.0
            pg.tick()
        assert pg.talk.line(now.t) is None  # 5 s: a short phase says nothing
        now.t = 12.0
        assert pg.talk.line(now.t) == "2:prune  cut 1/2 / recovery  5/20 layers (25%)  elapsed 0:12  ETA 0:36"
        now.t = 20.0
        assert pg.talk.line(now.t) is None  # said 8 s ago
        now.t = 42.0
        assert pg.talk.line(now.t).startswith("2:prune  cut 1/2 / recovery  5/20 layers")
    assert said == ["2:prune  recovery: done in 0:42", "2:prune  cut 1/2: done in 0:42"]


def test_talking_prints_long_phases_and_notes_on_stdout_and_in_the_log(capsys, caplog):
    import time

    from distillprune.core.progress import note, phase, talking, tick

    @phase("scoring blocks", unit="evaluations")
    def score() -> None:
        for _ in range(3):
            tick()
            time.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="distillprune.progress"):
        with talking("2:prune", first_after=0.04, every=0.03):
            score()
            note("chosen: candidate d0.25/w0: 2.10x")
            with phase("quick one"):
                pass
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("2:prune  scoring blocks  ") and "evaluations  elapsed 0:00" in line for line in out)
    assert "2:prune  scoring blocks: done in 0:00" in out and "2:prune  chosen: candidate d0.25/w0: 2.10x" in out
    assert not any("quick one" in line for line in out)  # ended within the threshold
    assert [r.getMessage() for r in caplog.records] == out


def test_outside_a_run_phases_are_silent_and_notes_go_to_the_log_only(capsys, caplog):
    from distillprune.core.progress import expect, note, phase, tick

    with caplog.at_level(logging.INFO, logger="distillprune.progress"), phase("recovery"):
        expect(3)
        tick()
        note("recovery (lstsq): 12 layers")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["recovery (lstsq): 12 layers"]


@pytest.mark.slow
def test_a_run_says_each_long_phase_on_stdout_and_in_run_log(tmp_path, capsys, monkeypatch):
    """Every phase of a run, past the threshold (here 0 s), ends with a line on stdout and in run.log."""
    from distillprune.core import progress as pg
    from distillprune.pipeline import compress
    from distillprune.recipes.schema import Recipe

    monkeypatch.setattr(pg, "FIRST_AFTER", 0.0)
    monkeypatch.setattr(pg, "EVERY", 1e9)
    recipe = Recipe.model_validate(
        {
            "name": "talk",
            "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [2, 1, 1]}},
            "data": {"source": "digits", "limit_train": 128, "limit_test": 64, "batch_size": 64},
            "runtime": {"device": "cpu", "progress": True, "tensorboard": False},
            "measure": {"batch_sizes": [1], "warmup": 1, "repeats": 1, "min_window_s": 0.001, "pairs": 1},
            "stages": [
                {"type": "train", "epochs": 1},
                {
                    "type": "prune",
                    "width": {"ratio": 0.5, "round_to": 4},
                    "depth": {"blocks": 1, "calib_samples": 64},
                    "epochs_per_step": 1,
                    "distill": {"losses": [{"name": "kd"}], "cache": True},
                    "recovery": {"method": "lstsq"},
                },
                {"type": "export"},
            ],
        }
    )
    compress(recipe, tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    log = (tmp_path / "run" / "run.log").read_text()
    for what in [
        "1:train  evaluating on 64 test samples",
        "1:train  exporting ONNX (to measure it)",
        "1:train  timing (ONNX Runtime)",
        "2:prune  scoring blocks",
        "2:prune  recovery",
        "2:prune  cut 1/1",
        "2:prune  caching the teacher's outputs",
        "3:export  exporting ONNX",
        "3:export  checking the ONNX file against torch",
    ]:
        assert f"{what}: done in 0:0" in "\n".join(out), (what, out)
        assert f"{what}: done in 0:0" in log, what
    stages = json.loads((tmp_path / "run" / "report.json").read_text())["stages"]
    assert all(set(s["load"]) == {"before", "after"} for s in stages if s["macs"] is not None)  # timed with the load
    first = next(o for o in out if o.startswith("1:train  step 1/"))
    assert "first step after" in first and "ETA" not in first.split("set-up included")[0]
