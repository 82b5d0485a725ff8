"""A depthwise net of a user's own at a 2x measured target (issue 31, "Depthwise nets"): does the fine-tune keep
what recovery won?

The user: a MobileNetV2-style class in their own file (``bench/depthwise_net.py``: inverted residuals, depthwise
3x3, identity residuals where shapes allow), trained to convergence on sklearn's digits upscaled to 32x32 (an
.npz written here, seeded: 1,437 training and 360 test images). Everything runs through recipes, as a user
would (``pipeline.execute``):

  dense   ``model: {python: bench/depthwise_net.py:DepthwiseNet}``, one ``train`` stage (from scratch)
  rows    ``model: {python: ..., weights: <the dense weights>}``, then
          ``prune`` with ``target: {latency_speedup: 2.0}`` and ``epochs_per_step: 1`` (KD from the dense model),
          and ``finetune: {epochs: 1}`` (KD from the dense model)

Rows (``--rows``):
  regime        the optimizer / schedule / keep-best / BatchNorm keys left unset: the library's fine-tune
                regime decides (``train.policy``)
  before31      the library before issue 31, spelt out: ``optimizer: {lr: 0.02}`` in prune, ``{lr: 0.01}`` in
                finetune, ``schedule: {name: onecycle}``, ``keep_best: {enabled: false}``,
                ``batchnorm: {renormalize: false}``
  bn_frozen     regime + ``batchnorm: {frozen: 1}`` (statistics frozen throughout both trainings)
  lr_half       regime + ``optimizer: {lr: 0.005}`` in both trainings
  lr_double     regime + ``optimizer: {lr: 0.02}`` in both trainings
  recoverable   regime + ``target.block_choice: recoverability``

Per row: the planner's plan (blocks removed, its estimate -- top-1 on held-out *training* images, which the
teacher has fitted: optimistic), the test top-1 right after the cut and its recovery (E = 0: observed at the
start of the prune step's training, before its first step), after the prune step's epoch, after the fine-tune,
each training's held-out curve and the point it kept, and the measured speedup of the final model timed back to
back with the dense model (``bench/_common.side_by_side``, ONNX Runtime CPU, 1 thread, the 1-minute load beside
it). Rows merge into OUT/results.json as they finish; the table is rendered from that file.

  python bench/depthwise.py --out runs/depthwise                 # dense, then the rows regime, before31
  python bench/depthwise.py --out runs/depthwise --rows bn_frozen,lr_half
  python bench/depthwise.py --out runs/depthwise-m05 --mult 0.5           # MobileNetV2-0.5: a thinner net
  python bench/depthwise.py --out runs/dw-abl --mult 0.5 --macs-ratio 4 --rows regime,before31,bn_frozen,lr_half
  python bench/depthwise.py --out runs/depthwise --retime        # re-time every finished row, back to back
  python bench/depthwise.py --out runs/depthwise --table
  python bench/depthwise.py --quick --out /tmp/dw                # minutes: 3 dense epochs, fewer timings
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    load_results,
    machine,
    machine_line,
    onnx_of,
    save_results,
    side_by_side,
)

from distillprune.core.checkpoint import load_checkpoint  # noqa: E402
from distillprune.pipeline import execute  # noqa: E402
from distillprune.recipes.schema import Recipe  # noqa: E402
from distillprune.train import trainer as trainer_module  # noqa: E402
from distillprune.train.logging import listen  # noqa: E402
from distillprune.train.trainer import evaluate  # noqa: E402

NET = str(Path(__file__).resolve().parent / "depthwise_net.py") + ":DepthwiseNet"
OLD_PRUNE = {"optimizer": {"lr": 0.02}}
OLD_FINETUNE = {"optimizer": {"lr": 0.01}}
OLD_BOTH = {"schedule": {"name": "onecycle"}, "keep_best": {"enabled": False}, "batchnorm": {"renormalize": False}}
#: row -> (prune stage keys, finetune stage keys, target keys) added to the recipe
ROWS: dict[str, tuple[dict, dict, dict]] = {
    "regime": ({}, {}, {}),
    "before31": ({**OLD_PRUNE, **OLD_BOTH}, {**OLD_FINETUNE, **OLD_BOTH}, {}),
    "bn_frozen": ({"batchnorm": {"frozen": 1.0}}, {"batchnorm": {"frozen": 1.0}}, {}),
    "lr_half": ({"optimizer": {"lr": 0.005}}, {"optimizer": {"lr": 0.005}}, {}),
    "lr_double": ({"optimizer": {"lr": 0.02}}, {"optimizer": {"lr": 0.02}}, {}),
    "recoverable": ({}, {}, {"block_choice": "recoverability"}),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/depthwise"))
    ap.add_argument("--rows", default="regime,before31", help=f"of {', '.join(ROWS)}")
    ap.add_argument("--seed", type=int, default=0, help="the rows' recipe seed (the dense model keeps seed 0)")
    ap.add_argument("--dense-epochs", type=int, default=60)
    ap.add_argument("--mult", type=float, default=1.0, help="the net's width multiplier (MobileNetV2's alpha)")
    ap.add_argument("--speedup", type=float, default=2.0, help="target.latency_speedup")
    ap.add_argument(
        "--macs-ratio",
        type=float,
        default=None,
        help="target.macs_ratio instead of the latency target: a plan that does not depend on the machine's load "
        "(the same cut for every row: for ablations of the training)",
    )
    ap.add_argument("--pairs", type=int, default=7, help="side-by-side pairs per batch size")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="3 dense epochs, 3 timing pairs, fewer latency repeats")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tests: 256/90 images, 1 dense epoch, a MACs target (2x; nothing timed while planning), 1 timing pair",
    )
    ap.add_argument("--retime", action="store_true", help="re-time every finished row back to back and stop")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/results.json and stop")
    a = ap.parse_args(argv)
    if a.quick or a.smoke:
        a.dense_epochs, a.pairs, a.quick = 3, 3, True
    a.target = {"latency_speedup": a.speedup} if a.macs_ratio is None else {"macs_ratio": a.macs_ratio}
    if a.smoke:
        a.target = {"macs_ratio": a.speedup, "depth_fractions": [0.0, 0.25]}
        a.dense_epochs, a.pairs = 1, 1
        a.limit_train, a.limit_test = a.limit_train or 256, a.limit_test or 90
    unknown = [r for r in a.rows.split(",") if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    return a


# ------------------------------------------------------------------------------------------- data
def write_digits32(path: Path, seed: int = 0) -> Path:
    """sklearn's 8x8 digits, bilinearly upscaled to 32x32 (uint8, N x 1 x 32 x 32), split 80/20 (stratified,
    ``seed``) into an .npz for the ``npz`` source."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images / 16.0).float()[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    xtr, xte, ytr, yte = train_test_split(x8, d.target, test_size=0.2, random_state=seed, stratify=d.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------- recipes
def base(a: argparse.Namespace, data: Path, seed: int) -> dict:
    return {
        "seed": seed,
        "data": {
            "source": "npz",
            "path": str(data),
            "batch_size": 64,
            "eval_batch_size": 360,
            "limit_train": a.limit_train,
            "limit_test": a.limit_test,
            "augment": {"crop_padding": 2},  # digits: shifts, no flips
        },
        # one training thread: the machine is shared (and depthwise convs gain little from a second one)
        "runtime": {"progress": False, "tensorboard": False, "threads": 1},
        "measure": {
            "batch_sizes": [1, 32],
            "threads": 1,
            "repeats": 1 if a.smoke else 3 if a.quick else 7,
            "warmup": 2 if a.smoke else 10,
            "pairs": a.pairs,
        },
    }


def dense_recipe(a: argparse.Namespace, data: Path) -> dict:
    return {
        **base(a, data, 0),
        "name": "depthwise_dense",
        "model": {"python": NET, "kwargs": {"mult": a.mult}},
        "stages": [
            {
                "type": "train",
                "epochs": a.dense_epochs,
                "label_smoothing": 0.1,
                "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 4e-5},
            }
        ],
    }


def row_recipe(a: argparse.Namespace, data: Path, weights: Path, row: str) -> dict:
    prune_keys, finetune_keys, target_keys = ROWS[row]
    return {
        **base(a, data, a.seed),
        "name": f"depthwise_{row}",
        "model": {"python": NET, "kwargs": {"mult": a.mult}, "weights": str(weights)},
        "stages": [
            {
                "type": "prune",
                "width": {"importance": "l2"},
                "target": {**a.target, **target_keys},
                "epochs_per_step": 1,
                **prune_keys,
            },
            {"type": "finetune", "epochs": 1, **finetune_keys},
        ],
    }


# ------------------------------------------------------------------------------------------- observing
@contextmanager
def observed() -> Iterator[dict[str, Any]]:
    """What the run's trainings did, seen from outside: the test top-1 at the start of every ``fit`` (before
    its BatchNorm re-normalisation and first step: the model as the cut and recovery, or the stage before,
    handed it over), every epoch record (``listen``), and the 1-minute load at each of them."""
    seen: dict[str, Any] = {"starts": [], "records": [], "load1": [os.getloadavg()[0]]}
    begin = trainer_module._Loop.begin  # instrumentation only: the bench observes, the run is unchanged

    def watched(loop: Any, data: Any) -> None:
        seen["starts"].append(evaluate(loop.model, data, runtime=loop.runtime))
        begin(loop, data)

    def record(tag: str, step: int, values: dict[str, Any]) -> None:
        seen["records"].append({"tag": tag, **values})
        seen["load1"].append(os.getloadavg()[0])

    trainer_module._Loop.begin = watched  # type: ignore[method-assign]
    try:
        with listen(record):
            yield seen
    finally:
        trainer_module._Loop.begin = begin  # type: ignore[method-assign]
        seen["load1"].append(os.getloadavg()[0])


def curve(rec: dict) -> dict:
    """The held-out checks of one training (its last epoch record) and the point it kept."""
    return {k: rec[k] for k in ("checks", "kept", "note") if k in rec}


def run_row(a: argparse.Namespace, data: Path, dense: Path, row: str, key: str) -> dict:
    """One row (recipe ``row``, run in OUT/``key``) and what it did."""
    weights = dense / "stages" / "01_train" / "model.safetensors"
    t0 = time.perf_counter()
    if (a.out / key).exists():  # a row killed before it reached results.json: run it again from the start
        shutil.rmtree(a.out / key)
    with observed() as seen:
        state = execute(Recipe.model_validate(row_recipe(a, data, weights, row)), a.out / key, quiet=True)
    prune, finetune = state.report.stages[-2], state.report.stages[-1]
    det = prune.details_dict()
    plan = det.get("plan") or {}
    by_tag: dict[str, list[dict]] = {}
    for r in seen["records"]:
        by_tag.setdefault(r["tag"].split(":", 1)[-1].split("/", 1)[0], []).append(r)
    prune_recs, ft_recs = by_tag.get("prune", []), by_tag.get("finetune", [])
    final = load_checkpoint(a.out / key / "stages" / "02_finetune", trust_code=True)[0]
    dense_model = load_checkpoint(dense / "stages" / "01_train", trust_code=True)[0]
    shape = (1, 32, 32)
    return {
        "removed_blocks": det.get("removed_blocks", []),
        "channels_removed": sum((det.get("channels_removed") or {}).values()),
        "est_top1": plan.get("est_top1"),
        "planned_speedup": plan.get("achieved"),
        "macs_ratio": None if not prune.macs else round(state.report.baseline.macs / finetune.macs, 3),
        "e0": seen["starts"][0] if seen["starts"] else None,
        "finetune_start": seen["starts"][1] if len(seen["starts"]) > 1 else None,
        "after_prune_epoch": prune.accuracy,
        "after_finetune": finetune.accuracy,
        "prune_last_test": prune_recs[-1]["test_acc"] if prune_recs else None,
        "prune_curve": curve(prune_recs[-1]) if prune_recs else {},
        "finetune_curve": curve(ft_recs[-1]) if ft_recs else {},
        "lr": {
            "prune": prune_recs[-1]["lr"] if prune_recs else None,
            "finetune": ft_recs[-1]["lr"] if ft_recs else None,
        },
        "pipeline_speedups": dict(finetune.speedups),
        "latency": side_by_side(onnx_of(final, shape), onnx_of(dense_model, shape), shape, pairs=a.pairs),
        "load1_during": [round(min(seen["load1"]), 2), round(max(seen["load1"]), 2)],
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": a.seed,
        "recipe": row_recipe(a, data, weights, row)["stages"],
    }


def run_dense(a: argparse.Namespace, data: Path) -> dict:
    t0 = time.perf_counter()
    loads = [os.getloadavg()[0]]
    state = execute(Recipe.model_validate(dense_recipe(a, data)), a.out / "dense", quiet=True)
    loads.append(os.getloadavg()[0])
    st = state.report.stages[-1]
    return {
        "top1": st.accuracy,
        "params": st.params,
        "macs": st.macs,
        "blocks": 11,
        "epochs": a.dense_epochs,
        "mult": a.mult,
        "load1_during": [round(min(loads), 2), round(max(loads), 2)],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def retime(a: argparse.Namespace, results: dict) -> None:
    """Every finished row's final model timed again back to back with the dense model (a quieter moment)."""
    dense_model = load_checkpoint(a.out / "dense" / "stages" / "01_train", trust_code=True)[0]
    shape = (1, 32, 32)
    ref = onnx_of(dense_model, shape)
    for row, r in results.items():
        if row.startswith("_") or row == "dense":
            continue
        final = load_checkpoint(a.out / row / "stages" / "02_finetune", trust_code=True)[0]
        r["latency"] = side_by_side(onnx_of(final, shape), ref, shape, pairs=a.pairs)
        r["retimed"] = True
        save_results(a.out / "results.json", results)
        print(row, r["latency"]["bs1"], flush=True)


# ------------------------------------------------------------------------------------------- tables
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _points(c: dict) -> str:
    checks = c.get("checks") or []
    if not checks:
        return "- (no held-out checks)"
    kept = c.get("kept", {})
    return " ".join(
        f"**{p.get('val_top1', float('nan')):.1f}**" if p == kept else f"{p.get('val_top1', float('nan')):.1f}"
        for p in checks
    )


def table(results: dict) -> str:
    d = results.get("dense", {})
    head = (
        "| row | blocks removed | planner's estimate (train-image, optimistic) | E = 0 (cut + recovery) | after the "
        "prune step's epoch | after finetune | vs dense | speedup bs1 (min-max) | speedup bs32 | MAC ratio | "
        "load1 at timing |"
    )
    lines = [head, "|" + "---|" * 11]
    if d:
        lines.append(
            f"| dense ({d['epochs']} epochs) | - | - | - | - | {d['top1']:.2f} | - | 1.00x | 1.00x | 1.00x | - |"
        )
    for row, r in results.items():
        if row.startswith("_") or row == "dense":
            continue
        lat = r["latency"]
        lines.append(
            f"| {row} | {len(r['removed_blocks'])} | {_pct(r['est_top1'])} | {_pct(r['e0'])} | "
            f"{_pct(r['after_prune_epoch'])} | **{_pct(r['after_finetune'])}** | "
            f"{r['after_finetune'] - d.get('top1', float('nan')):+.2f} pp | "
            f"{lat['bs1']['speedup']:.2f}x ({lat['bs1']['speedup_min']:.2f}-{lat['bs1']['speedup_max']:.2f}) | "
            f"{lat['bs32']['speedup']:.2f}x | {r['macs_ratio']:.2f}x | {lat['bs1']['load1']:.1f} |"
        )
    curves = ["", "| row | training | held-out top-1 at each check (start first; **kept**) |", "|---|---|---|"]
    for row, r in results.items():
        if row.startswith("_") or row == "dense":
            continue
        for name, key in (("prune step", "prune_curve"), ("finetune", "finetune_curve")):
            curves.append(f"| {row} | {name} | {_points(r[key])} |")
    return "\n".join(lines + curves)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    path = a.out / "results.json"
    results = load_results(path)
    if a.table:
        print(table(results))
        return 0
    if a.retime:
        retime(a, results)
        print(table(results))
        return 0
    setup = results.setdefault("_setup", {"commands": []})
    setup.update(machine=machine(), machine_line=machine_line(machine()))
    setup["commands"].append(" ".join(["python bench/depthwise.py", *(sys.argv[1:] if argv is None else argv)]))
    data = write_digits32(a.out / "digits32.npz")
    if "dense" not in results or not (a.out / "dense" / "stages" / "01_train").exists():
        results["dense"] = run_dense(a, data)
        save_results(path, results)
        print("dense", results["dense"], flush=True)
    for row in a.rows.split(","):
        key = row if a.seed == 0 else f"{row}_s{a.seed}"
        if key in results:
            continue
        results[key] = run_row(a, data, a.out / "dense", row, key)
        save_results(path, results)
        print(key, {k: v for k, v in results[key].items() if k not in ("recipe", "latency")}, flush=True)
    print(machine_line(results["_setup"]["machine"]))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
