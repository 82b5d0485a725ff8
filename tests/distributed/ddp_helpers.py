"""What the torchrun tests share with their worker script (imported as a plain module: the folder is on
sys.path for pytest's rootdir-relative imports and for the worker, which runs from here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from distillprune.data import DataConfig, load_data
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import Distiller
from distillprune.models import build_model
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
WIDTHS = {"widths": (16, 16, 32), "blocks": (2, 1, 1)}
# batch 63 over 2 ranks: shares of 32 and 31 samples, so the per-rank loss weighting is exercised
BATCH = 63
RT = RuntimeConfig(device="cpu", threads=1, progress=False, tensorboard=False, sync_bn=True)


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N args...`` (gloo on the CPU)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def small_digits(n_train: int = 384) -> DataBundle:
    b = load_data(DataConfig(source="digits"))
    return DataBundle(b.train.subset(n_train), b.test.subset(120), b.num_classes, b.classes, b.mean, b.std, "digits")


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", 10, (1, 8, 8), **WIDTHS)


def kd_fitnet() -> Distiller:
    """KD + a FitNets hint: the hint's adapter is the objective's own trainable parameter (not in the model)."""
    torch.manual_seed(9)
    teacher = build_model("digits_cnn", 10, (1, 8, 8), widths=(8, 16, 24), blocks=(1, 1, 1))
    return Distiller.from_specs(
        teacher,
        [
            {"name": "kd", "temperature": 2.0, "alpha": 0.7},
            {"name": "fitnet", "weight": 0.1, "pairs": [["layer3", "layer3"]]},
        ],
    )


def fit_settings(epochs: int = 2) -> FitSettings:
    return FitSettings(epochs, OptimizerConfig(lr=0.05), ScheduleConfig(name="constant"))


#: prune while distilling: a block chosen by KD loss, then channels by L2 norm, KD training between the steps
PRUNE = {
    "depth": {"blocks": 1},
    "width": {"ratio": 0.5, "round_to": 4},
    "steps": 2,
    "epochs_per_step": 1,
    "optimizer": {"lr": 0.02},
    "schedule": {"name": "constant"},
}
