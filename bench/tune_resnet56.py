"""``distillprune tune`` on the real ResNet-56: the tuned recipe's test top-1 against the shipped default
recipe's, both pruned to the same measured target, both trained on all the training data afterwards.

1. search: ``tune`` over the KD temperature and weight, both learning rates and the depth shares the planner
   may try, on a validation split carved from the training data (E epochs per stage, halving pruner);
2. default: the recipe with its shipped values, trained on all the training data, test top-1 and speedup;
3. tuned: best.yaml with the validation split and the budget removed, the same way.

Trials whose plan-affecting knobs are equal (the space's learning rates and KD knobs change none) share one plan
(``prune.plan_store``): the study plans once per drawn ``target.depth_fractions``, each plan priced by the latency
table (kept in the per-machine cache across plans) with only its finalists timed. ``plans:`` says how many plans
were made and reused.

Full run (the shipped ResNet-56; a GPU trains faster, the CPU works):
  python bench/tune_resnet56.py --teacher ../shared/models/cifar10-resnet56 --data ../shared/data/cifar10-jpeg.npz \
      --trials 10 --epochs 1 --out bench_out/tune_resnet56           # add --resume to continue a killed study
Quick (tests, CPU, seconds): a small digits net, a tiny space, 3 trials:
  python bench/tune_resnet56.py --quick --out /tmp/tq
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import distillprune as dp
from distillprune.core.config import validate
from distillprune.recipes.schema import apply_overrides, read_yaml
from distillprune.tune import tune

KD = {"name": "kd", "temperature": 4.0, "alpha": 0.9}


def runtime() -> dict[str, Any]:
    """bf16, channels-last and compile where there is a GPU; plain float32 on a CPU (as the real-teacher bench)."""
    cuda = torch.cuda.is_available()
    return {"device": "auto", "amp": "bf16" if cuda else "none", "channels_last": cuda, "progress": False,
            "tensorboard": False}  # fmt: skip


def full_recipe(a: argparse.Namespace) -> dict[str, Any]:
    """ResNet-56 from its trained checkpoint, pruned to a 2x measured ORT speedup while distilling, fine-tuned."""
    return {
        "name": "tune_resnet56",
        "seed": 0,
        "model": {"name": "resnet56", "checkpoint": a.teacher},
        "data": {
            "source": a.source,
            "path": a.data,
            "batch_size": 128,
            "eval_batch_size": 1000,
            "augment": {"crop_padding": 4, "hflip": True},
        },
        "runtime": runtime(),
        "measure": {"batch_sizes": [1], "threads": 1},
        "stages": [
            {
                "type": "prune",
                "target": {"latency_speedup": a.target},
                "width": {"importance": "taylor", "round_to": 8},
                "steps": 1,
                "epochs_per_step": a.epochs,
                "optimizer": {"lr": 0.05},
                "distill": {"losses": [dict(KD)]},
            },
            {"type": "finetune", "epochs": a.epochs, "optimizer": {"lr": 0.05}, "distill": {"losses": [dict(KD)]}},
        ],
    }


FULL_SPACE = {
    "stages.0.distill.losses.0.temperature": {"float": [1, 8], "log": True},
    "stages.0.distill.losses.0.alpha": {"float": [0.5, 1.0]},
    "stages.0.optimizer.lr": {"float": [0.01, 0.2], "log": True},
    "stages.1.optimizer.lr": {"float": [0.01, 0.3], "log": True},
    "stages.0.target.depth_fractions": {
        "categorical": [[0.0], [0.0, 0.25], [0.0, 0.25, 0.5], [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75]]
    },
}


def quick_recipe(a: argparse.Namespace) -> dict[str, Any]:
    """A small digits net trained, pruned while distilling and fine-tuned, in a few seconds on a CPU."""
    return {
        "name": "tune_quick",
        "seed": 0,
        "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}},
        "data": {"source": "digits", "batch_size": 32},
        "runtime": {"threads": 1, "progress": False, "tensorboard": False},
        "measure": {"batch_sizes": [1], "threads": 1, "repeats": 2, "min_window_s": 0.005, "pairs": 1},
        "stages": [
            {"type": "train", "epochs": 3, "optimizer": {"lr": 0.2}},
            {
                "type": "prune",
                # a MACs target: the trials plan (and share their plan, tune's plan store) without timing anything
                "target": {"macs_ratio": 1.5, "depth_fractions": [0.0], "val_samples": 64, "calib_samples": 64},
                "width": {"importance": "l2", "round_to": 4},
                "steps": 1,
                "epochs_per_step": 2,
                "optimizer": {"lr": 0.05},
                "distill": {"losses": [dict(KD)]},
            },
        ],
    }


QUICK_SPACE = {
    "stages.1.distill.losses.0.temperature": {"float": [1, 8], "log": True},
    "stages.1.optimizer.lr": {"float": [0.01, 0.2], "log": True},
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="trained ResNet-56 checkpoint folder (full run)")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    ap.add_argument("--source", default="cifar10_jpeg")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1, help="E: epochs of each training stage, per trial and after")
    ap.add_argument("--target", type=float, default=2.0, help="measured ORT CPU speedup the prune stage must reach")
    ap.add_argument("--budget-fraction", type=float, default=1.0)
    ap.add_argument("--out", default="bench_out/tune_resnet56")
    ap.add_argument("--resume", action="store_true", help="continue the search in --out")
    ap.add_argument("--quick", action="store_true", help="digits, tiny space, 3 trials (tests)")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.budget_fraction = 3, 0.4
    elif not a.teacher:
        ap.error("--teacher TEACHER_DIR is needed for the full run (or --quick)")
    return a


def final_run(raw: dict[str, Any], sets: list[str], out: Path) -> dict[str, Any]:
    """Train ``raw`` (with ``sets``) on all the training data; its test top-1, speedup and wall time."""
    recipe = validate(dp.Recipe, apply_overrides(copy.deepcopy(raw), sets), where=str(out))
    t0 = time.perf_counter()
    report = dp.compress(recipe, out, quiet=True)
    final = report.final
    assert final is not None
    key = f"ort_bs{recipe.measure.batch_sizes[0]}"
    return {"test_top1": final.accuracy, "speedup": report.speedup(final, key), "seconds": time.perf_counter() - t0}


def plans_of(search: Path) -> dict[str, Any]:
    """How the trials planned: how many planned (and the seconds it took them), how many reused a plan another
    trial made with the same plan-affecting knobs (``prune.plan_store``)."""
    planned, reused, seconds = 0, 0, 0.0
    for path in sorted((search / "trials").glob("trial-*/report.json")):
        stages = json.loads(path.read_text())["stages"]
        for st in stages:
            plan = (st.get("details") or {}).get("plan") if st.get("type") == "prune" else None
            if plan:
                reused += bool(plan.get("reused"))
                planned += not plan.get("reused")
                seconds += 0.0 if plan.get("reused") else float(plan.get("seconds") or 0.0)
    return {"planned": planned, "reused": reused, "planning_s": round(seconds, 1)}


def main() -> int:
    a = parse()
    out = Path(a.out)
    raw, space = (quick_recipe(a), QUICK_SPACE) if a.quick else (full_recipe(a), FULL_SPACE)
    t0 = time.perf_counter()
    rep = tune(dp.Recipe.model_validate(raw), space, trials=a.trials, out=out / "search",
               budget_fraction=a.budget_fraction, resume=a.resume)  # fmt: skip
    search_s = time.perf_counter() - t0
    if rep.chosen is None:
        print("no trial completed", file=sys.stderr)
        return 1
    tuned = read_yaml(out / "search" / "best.yaml")
    unbudgeted = ["data.validation_split=null", "data.limit_train=null", "runtime.val_loss=false"]
    rows = {"default": final_run(raw, [], out / "default"), "tuned": final_run(tuned, unbudgeted, out / "tuned")}
    chosen = rep.trial(rep.chosen)
    plans = plans_of(out / "search")
    result = {"search_seconds": search_s, "trials": rep.counts, "chosen": chosen.number, "params": chosen.params,
              "validation_top1": chosen.val_top1, "rows": rows, "plans": plans}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"search: {len(rep.trials)} trials ({rep.counts}) in {search_s:.0f}s; best.yaml = trial {chosen.number}")
    print(
        f"plans: {plans['planned']} planned in {plans['planning_s']:.0f}s, {plans['reused']} reused by trials with "
        "the same plan-affecting knobs"
    )
    print("| recipe | test top-1 % | measured speedup (ORT CPU bs1) | wall s |\n|---|---|---|---|")
    for name, r in rows.items():
        sp = "–" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"| {name} | {r['test_top1']:.2f} | {sp} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
