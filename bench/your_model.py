"""Bring your own architecture: torchvision MobileNetV2 and ResNet-18 on CIFAR-10, width vs depth pruning
side by side, each through a recipe as a user would write it (``model: {name: torchvision, kwargs: {arch}}``).

Per architecture: train the dense network (the teacher; no pretrained weights: nothing is downloaded), then
from that checkpoint two rows with the same budget, each pruned while distilling from the dense teacher:
  width  channels removed (L2, rounded to 8) to the given ratio, KD between steps
  depth  residual blocks removed (found in the graph by torch.fx, chosen by the smallest KD-loss increase)
Each row: top-1, params, MACs, ORT CPU latency (bs 1 / 32, 1 thread), speedups. Results go to
OUT/results.json after every row (a killed run keeps its finished rows) and a Markdown table to stdout.

Reduced CPU run (needs the vision venv: make vision-env):
  .venv-vision/bin/python bench/your_model.py --data ../shared/data/cifar10-jpeg.npz --reduced
Smoke (tests): --smoke --source npz --data tiny.npz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distillprune.core.io import write_json
from distillprune.pipeline import execute
from distillprune.recipes.schema import Recipe

ARCHS = {"mobilenet_v2": {"width": 0.4, "blocks": 5}, "resnet18": {"width": 0.4, "blocks": 3}}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    ap.add_argument("--source", default="cifar10_jpeg")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--rows", default="dense,width,depth")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10, help="KD epochs of each pruned row (split over its steps)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--out", default="bench_out/your_model")
    ap.add_argument("--reduced", action="store_true", help="CPU-sized: 4k/1k images, 8 teacher + 4 row epochs")
    ap.add_argument("--smoke", action="store_true", help="tiny subset, 1 epoch (tests)")
    ap.add_argument("--side-by-side", action="store_true", help="re-time every row's ONNX back to back at the end")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the side-by-side timing")
    a = ap.parse_args()
    if a.smoke:
        a.teacher_epochs, a.epochs, a.steps = 1, 1, 1
        a.limit_train, a.limit_test = a.limit_train or 128, a.limit_test or 64
    elif a.reduced:
        a.teacher_epochs, a.epochs = 8, 4
        a.limit_train, a.limit_test = a.limit_train or 4000, a.limit_test or 1000
    return a


def base(a: argparse.Namespace, arch: str) -> dict:
    return {
        "name": f"{arch}_cifar10",
        "seed": 0,
        "data": {
            "source": a.source,
            "path": a.data,
            "batch_size": 128,
            "eval_batch_size": 500,
            "limit_train": a.limit_train,
            "limit_test": a.limit_test,
            "augment": {"crop_padding": 4, "hflip": True},
        },
        "runtime": {"progress": False, "tensorboard": False},
        "measure": {"batch_sizes": [1, 32], "threads": 1, "repeats": 2 if a.smoke else 7},
    }


def prune_stage(a: argparse.Namespace, arch: str, row: str) -> dict:
    kd = {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]}
    per_step = max(1, a.epochs // a.steps)
    cut = (
        {"width": {"ratio": ARCHS[arch]["width"], "importance": "l2", "round_to": 8}}
        if row == "width"
        else {"depth": {"blocks": 1 if a.smoke else ARCHS[arch]["blocks"]}}
    )
    steps = a.steps if row == "width" else 1
    return {
        "type": "prune",
        **cut,
        "steps": steps,
        "epochs_per_step": per_step if row == "width" else a.epochs,
        "optimizer": {"lr": 0.02},
        "distill": kd,
    }


def run(recipe: dict, out: Path) -> dict:
    t0 = time.perf_counter()
    state = execute(Recipe.model_validate(recipe), out, quiet=True)
    last = state.report.stages[-1]
    return {
        "top1": last.accuracy,
        "params": last.params,
        "macs": last.macs,
        "ms": dict(last.latency_ms),
        "seconds": round(time.perf_counter() - t0, 1),
        "details": last.details.to_dict() if last.details is not None else None,
    }


def main() -> int:
    a = parse()
    out = Path(a.out)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    rows = a.rows.split(",")
    for arch in a.archs.split(","):
        teacher = out / arch / "dense"
        r = results.setdefault(arch, {})
        if "dense" not in r or not (teacher / "stages").exists():
            recipe = {
                **base(a, arch),
                "model": {"name": "torchvision", "kwargs": {"arch": arch}},
                "stages": [
                    {
                        "type": "train",
                        "epochs": a.teacher_epochs,
                        "label_smoothing": 0.1,
                        "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4},
                    }
                ],
            }
            r["dense"] = run(recipe, teacher)
            write_json(results_file, results)
        ckpt = teacher / "stages" / "01_train"
        for row in rows:
            if row == "dense" or row in r:
                continue
            recipe = {**base(a, arch), "model": {"checkpoint": str(ckpt)}, "stages": [prune_stage(a, arch, row)]}
            r[row] = run(recipe, out / arch / row)
            write_json(results_file, results)
    print(table(results, a))
    if a.side_by_side:
        side = side_by_side(out, results, a.rounds)
        write_json(out / "side_by_side.json", side)
        print(side_table(side))
    return 0


def side_by_side(out: Path, results: dict, rounds: int) -> dict:
    """ORT CPU latency of each arch's rows timed back to back, ``rounds`` times (median): on a loaded machine
    rows measured minutes apart are not comparable."""
    import statistics

    from distillprune.core.checkpoint import load_checkpoint
    from distillprune.export.onnx import onnx_bytes
    from distillprune.measure.latency import LatencyConfig, ort_latency

    lat = LatencyConfig(batch_sizes=[1, 32], threads=1, repeats=3)
    side: dict = {}
    for arch, rows in results.items():
        folders = {
            "dense": out / arch / "dense" / "stages" / "01_train",
            **{r: out / arch / r / "stages" / "01_prune" for r in ("width", "depth") if r in rows},
        }
        onnx = {}
        for row, folder in folders.items():
            model, spec, _ = load_checkpoint(folder)
            onnx[row] = onnx_bytes(model, spec.input_shape)
        shape = spec.input_shape
        times: dict[str, dict[str, list[float]]] = {r: {"bs1": [], "bs32": []} for r in onnx}
        for _ in range(rounds):
            for row, data in onnx.items():
                for k, v in ort_latency(data, shape, lat).items():
                    times[row][k].append(v)
        side[arch] = {row: {k: round(statistics.median(v), 3) for k, v in t.items()} for row, t in times.items()}
    return side


def side_table(side: dict) -> str:
    lines = ["| model | row | ORT bs1 ms | ORT bs32 ms | speedup bs1 | speedup bs32 |", "|---|---|---|---|---|---|"]
    for arch, rows in side.items():
        d = rows["dense"]
        for row, ms in rows.items():
            lines.append(
                f"| {arch} | {row} | {ms['bs1']:.3f} | {ms['bs32']:.2f} | {d['bs1'] / ms['bs1']:.2f}x | "
                f"{d['bs32'] / ms['bs32']:.2f}x |"
            )
    return "\n".join(lines)


def table(results: dict, a: argparse.Namespace) -> str:
    lines = [
        "| model | row | top-1 % | params | MACs | ORT bs1 ms | ORT bs32 ms | speedup bs1 | speedup bs32 | "
        "MAC ratio | what was removed | seconds |",
        "|" + "---|" * 12,
    ]
    for arch, rows in results.items():
        d = rows.get("dense")
        for name in ("dense", "width", "depth"):
            r = rows.get(name)
            if r is None or d is None:
                continue
            ms, dms = r["ms"], d["ms"]
            det = r.get("details") or {}
            what = (
                f"{len(det.get('removed_blocks', []))} blocks"
                if det.get("removed_blocks")
                else f"{sum(det.get('channels_removed', {}).values())} channels"
                if det.get("channels_removed")
                else "-"
            )
            lines.append(
                f"| {arch} | {name} | {r['top1']:.2f} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.1f}M | "
                f"{ms['ort_bs1']:.3f} | {ms['ort_bs32']:.2f} | {dms['ort_bs1'] / ms['ort_bs1']:.2f}x | "
                f"{dms['ort_bs32'] / ms['ort_bs32']:.2f}x | "
                f"{d['macs'] / r['macs']:.2f}x | {what} | {r['seconds']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
