"""Interrupting the real command: Ctrl-C or SIGTERM exits 130 with one line that says how to resume, and a run
killed (SIGKILL) at random points, then resumed, ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import cli_command, cli_env, start_cli
from safetensors.torch import load_file

RECIPE = {
    "name": "interrupt",
    "seed": 5,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [2, 1, 1]}},
    "data": {"source": "digits", "limit_train": 192, "limit_test": 64, "batch_size": 64},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False},
    "stages": [
        {"type": "train", "epochs": 2},
        {
            "type": "prune",
            "width": {"ratio": 0.5, "round_to": 4},
            "depth": {"blocks": 1},
            "steps": 2,
            "epochs_per_step": 1,
        },
        {"type": "finetune", "epochs": 2, "optimizer": {"lr": 0.05}},
        {"type": "export"},
    ],
}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, f"{path} did not appear in {timeout}s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_exits_130_with_one_line_and_the_run_resumes(tmp_path: Path, sig: signal.Signals):
    recipe = tmp_path / "r.yaml"
    long = {**RECIPE, "stages": [{"type": "train", "epochs": 12}, {"type": "evaluate"}]}
    recipe.write_text(yaml.safe_dump(long))
    out = tmp_path / "run"
    proc = start_cli("run", str(recipe), "--out", str(out))
    ckpt = out / "stages" / "01_train" / "train" / "last.safetensors"
    _wait_for(ckpt, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    resume = f"distillprune run {recipe} --out {out} --resume"
    assert lines[0].startswith("interrupted") and resume in lines[0], lines[0]
    # the last epoch checkpoint is intact, and nothing is half-written
    assert load_file(str(ckpt))
    assert not list(out.rglob("*.tmp"))
    # the line's command continues the run
    res = subprocess.run(
        cli_command("run", str(recipe), "--out", str(out), "--resume"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "state.json").read_text()) == {"completed": 2, "kind": "evaluate"}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "stages" / "04_export" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path: Path):
    seed = int(os.environ.get("DISTILLPRUNE_KILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))

    full = tmp_path / "full"
    proc = start_cli("run", str(recipe), "--out", str(full))
    _wait_for(full / "run.json", proc)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=600)
    work = time.monotonic() - t0  # the run's work, after start-up
    assert proc.returncode == 0, err

    cut = tmp_path / "cut"
    kills = []
    for attempt in range(3):
        args = ["run", str(recipe), "--out", str(cut)] + (["--resume"] if attempt else [])
        proc = start_cli(*args)
        _wait_for(cut / "run.json", proc)
        if attempt == 0:
            time.sleep(0.05)  # run.json alone: resume must accept a run that completed nothing
        delay = rng.uniform(0, work)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(round(delay, 2))
        _, err = proc.communicate(timeout=600)
        assert proc.returncode in (0, -signal.SIGKILL), (seed, kills, err)
    res = subprocess.run(
        cli_command("run", str(recipe), "--out", str(cut), "--resume"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    where = f"seed {seed} (DISTILLPRUNE_KILL_SEED), kills after {kills}s of a {work:.1f}s run"
    print(where)
    assert res.returncode == 0, (where, res.stderr)

    a, b = _final_weights(full), _final_weights(cut)
    assert a.keys() == b.keys(), where
    for k in a:
        assert torch.equal(a[k], b[k]), (where, k)
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (full, cut))
    assert [s["accuracy"] for s in ra["stages"]] == [s["accuracy"] for s in rb["stages"]], where
    assert [s["index"] for s in rb["stages"]] == [1, 2, 3, 4], where
