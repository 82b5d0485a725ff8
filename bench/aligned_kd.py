"""Ablation of channel-aligned feature distillation (issue 19, item 4) on sklearn's digits, CPU, minutes.

The digits demo's teacher (``digits_cnn``, 10 epochs) is pruned as the demo's prune stage does (3 blocks,
width ``--ratios`` by L2, round_to 8, ``--steps`` steps of ``--epochs-per-step`` epochs of KD) with the KD loss alone
and with ``aligned`` (the stages' outputs on the kept channels) added at each ``--weights`` value, over
``--seeds`` training seeds. Printed: top-1 on the 360 test images right after the prune stage (no
fine-tuning), mean and min-max over the seeds.

  python bench/aligned_kd.py                                   # ratio 0.5 and 0.75, weights 0 / 0.5 / 2
  python bench/aligned_kd.py --ratios 0.75 --weights 0,1 --seeds 5
  python bench/aligned_kd.py --weights 0 --steps 4 --epochs-per-step 0.25 --lr-span stage   # the budget
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from distillprune.data import DataConfig, load_data
from distillprune.distill.distiller import CrossEntropy
from distillprune.models import build_model
from distillprune.prune import api
from distillprune.prune.config import PruneConfig
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, evaluate, fit
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainers import fit_trainer

RT = RuntimeConfig(device="cpu", progress=False, tensorboard=False, threads=2)
KD = {"name": "kd", "temperature": 4.0, "alpha": 0.9}


def teacher(data) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, (1, 8, 8))
    settings = FitSettings(10, OptimizerConfig(lr=0.2), ScheduleConfig())
    fit(model, data, settings, CrossEntropy(), context=Context(RT, LoaderOptions(batch_size=128, crop_padding=1)))
    return model.eval()


def pruned(dense, data, ratio: float, weight: float, a: argparse.Namespace, seed: int) -> float:
    model = copy.deepcopy(dense)
    losses = [KD] + ([{"name": "aligned", "weight": weight}] if weight else [])
    cfg = {
        "depth": {"blocks": 3},
        "width": {"ratio": ratio, "importance": "l2", "round_to": 8},
        "steps": a.steps,
        "epochs_per_step": a.epochs_per_step,
        "lr_span": a.lr_span,
        "optimizer": {"lr": 0.05},
        "distill": {"losses": losses},
    }
    train = fit_trainer(PruneConfig(**cfg), data, Context(RT, LoaderOptions(128, seed, crop_padding=1)), "prune")
    api.prune_(model, cfg, data, trainer=train, context=Context(RT, LoaderOptions(128, 0, crop_padding=1)))
    return evaluate(model, data, runtime=RT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", default="0.5,0.75")
    ap.add_argument("--weights", default="0,0.5,2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--epochs-per-step", type=float, default=1, help="a fraction puts several steps in an epoch")
    ap.add_argument("--lr-span", choices=["step", "stage"], default="step")
    a = ap.parse_args()
    data = load_data(DataConfig(source="digits"))
    dense = teacher(data)
    print(f"teacher top-1 {evaluate(dense, data, runtime=RT):.2f}")
    print(f"steps {a.steps} x {a.epochs_per_step:g} epochs, lr_span {a.lr_span}")
    print("| width ratio | aligned weight | top-1 after prune (mean) | min-max | seconds |")
    print("|---|---|---|---|---|")
    for ratio in (float(r) for r in a.ratios.split(",")):
        for w in (float(x) for x in a.weights.split(",")):
            t0 = time.perf_counter()
            accs = [pruned(dense, data, ratio, w, a, s) for s in range(a.seeds)]
            dt = (time.perf_counter() - t0) / a.seeds
            print(
                f"| {ratio} | {w:g} | {statistics.mean(accs):.2f} | {min(accs):.2f}-{max(accs):.2f} | {dt:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
