"""Label-free compression: a self-supervised teacher, pruned to a measured 2x and recovered three ways.

1. teacher: a CIFAR ResNet (ResNet-14 on the CPU budget; classifier dropped: ``model.task: embedding``)
   trained with SimCLR on the training images *without labels* (``data.labels: false``, ``ssl``);
2. prune: the teacher cut to a measured 2x ONNX Runtime speedup at batch 1 (``prune`` stage with a latency
   target: the planner's depth x width search, least-squares recovery, no training);
3. three recoveries of that one pruned network, the same epochs each, no label anywhere:
   (a) SSL distillation (the ``seed`` loss: similarity distributions over a queue of teacher embeddings),
   (b) ``embedding`` distillation (cosine to the teacher's embedding),
   (c) no distillation: plain SimCLR fine-tuning of the pruned net (the ``ssl`` objective);
4. every row (and the untrained network, for reference): kNN top-1 (k = 20, cosine) and linear-probe top-1
   on the labelled probe (training images with their labels as the memory, test images as queries), and its
   ONNX timed back to back with the dense teacher's (median speedup of pairs, min-max).

Each step is a recipe run by the pipeline (``distillprune.pipeline.execute``) in its own run folder under
``--out``; a step whose run folder is complete is reused, so a killed run resumes. Rows are written to
``OUT/results.json`` and the table to ``OUT/table.md`` as they finish.

    python bench/self_supervised.py --data ../shared/data/cifar10-jpeg.npz --out bench_out/ssl        # the CPU budget
    python bench/self_supervised.py --data ../shared/data/cifar10-jpeg.npz --out bench_out/ssl-q --quick  # smoke
    python bench/self_supervised.py --source digits --out /tmp/ssl-digits --quick                     # no pack
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, machine_line, onnx_of, side_by_side  # noqa: E402

from distillprune.core.checkpoint import load_checkpoint  # noqa: E402
from distillprune.core.config import validate  # noqa: E402
from distillprune.core.io import write_json, write_text  # noqa: E402
from distillprune.data.config import AugmentConfig  # noqa: E402
from distillprune.pipeline import execute  # noqa: E402
from distillprune.recipes.schema import Recipe  # noqa: E402

# what the CPU budget reduces (2 shared cores): images, epochs, the net
PRESETS: dict[str, dict[str, Any]] = {
    "cifar": dict(  # ResNet-14: the CIFAR ResNet of widths 16/32/64 with 2 blocks a stage (ResNet-20 has 3)
        model={"name": "resnet", "task": "embedding", "kwargs": {"widths": [16, 32, 64], "blocks": [2, 2, 2]}},
        train=5000,
        probe_memory=5000,
        probe_queries=2000,
        teacher_epochs=15,
        recover_epochs=8,
        batch_size=128,
        views={"crop_scale": [0.2, 1.0]},
        depth_fractions=[0.0, 0.34, 0.67],
        pairs=7,
        measure={"batch_sizes": [1], "threads": 1},
    ),
    "cifar-quick": dict(
        model={"name": "resnet20", "task": "embedding"},
        train=512,
        probe_memory=500,
        probe_queries=200,
        teacher_epochs=1,
        recover_epochs=1,
        batch_size=128,
        views={"crop_scale": [0.2, 1.0]},
        depth_fractions=[0.0],
        pairs=3,
        measure={"batch_sizes": [1], "threads": 1, "repeats": 3, "warmup": 1, "min_window_s": 0.01},
    ),
    "digits-quick": dict(
        model={"name": "digits_cnn", "task": "embedding"},
        train=None,
        probe_memory=None,
        probe_queries=None,
        teacher_epochs=2,
        recover_epochs=1,
        batch_size=128,
        views={"crop_scale": [0.5, 1.0], "hflip": 0.0},
        depth_fractions=[0.0],
        pairs=3,
        measure={"batch_sizes": [1], "threads": 1, "repeats": 3, "warmup": 1, "min_window_s": 0.01},
    ),
}

AUGMENT = AugmentConfig(crop_padding=4, hflip=True)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "a": ("(a) SSL distillation (seed)", {"distill": {"losses": [{"name": "seed"}]}}),
    "b": ("(b) embedding distillation (cosine)", {"distill": {"losses": [{"name": "embedding"}]}}),
    "c": ("(c) no distillation: SimCLR fine-tune", {"ssl": {"method": "simclr"}}),
}


def data_block(args: argparse.Namespace, p: dict[str, Any], labels: bool, probe: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {"source": args.source, "batch_size": p["batch_size"], "labels": labels, "seed": 0}
    if args.source == "cifar10_jpeg":
        d["path"] = str(args.data)
    limit_train, limit_test = (p["probe_memory"], p["probe_queries"]) if probe else (p["train"], p["probe_queries"])
    if limit_train:
        d["limit_train"] = limit_train
    if limit_test:
        d["limit_test"] = limit_test
    return d


def recipe(args: argparse.Namespace, p: dict[str, Any], name: str, model: dict[str, Any], stages: list) -> Recipe:
    raw = {
        "name": name,
        "seed": 0,
        "model": model,
        "data": data_block(args, p, labels=False),
        "runtime": {"progress": False, "tensorboard": False, "threads": args.threads},
        "measure": p["measure"],
        "probe": {"data": data_block(args, p, labels=True, probe=True)},
        "stages": stages,
    }
    return validate(Recipe, raw, where=name)


def run(folder: Path, rec: Recipe) -> dict[str, Any]:
    """The recipe's run in ``folder`` (reused when complete); its last measured row, and how long it took."""
    report_path = folder / "report.json"
    if not report_path.exists():
        t0 = time.perf_counter()
        execute(rec, folder, resume=folder.exists(), quiet=True)
        write_json(folder / "seconds.json", {"seconds": round(time.perf_counter() - t0, 1)})
    report = json.loads(report_path.read_text())
    final = [s for s in report["stages"] if s.get("macs") is not None][-1]
    seconds = (
        json.loads((folder / "seconds.json").read_text())["seconds"] if (folder / "seconds.json").exists() else None
    )
    return {"metrics": final["metrics"], "params": final["params"], "macs": final["macs"], "seconds": seconds}


def keep(results: dict[str, Any], key: str, label: str, row: dict[str, Any]) -> None:
    """Set row ``key``; a speed measured earlier for the same network (same MACs) is kept."""
    old = results.get(key, {})
    speed = {"speed": old["speed"]} if "speed" in old and old.get("macs") == row["macs"] else {}
    results[key] = {"label": label, **row, **speed}


def stage_dir(folder: Path) -> Path:
    """The checkpoint of the run's last stage."""
    return sorted((folder / "stages").glob("[0-9][0-9]_*"))[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="the CIFAR-10 JPEG pack")
    ap.add_argument("--source", default="cifar10_jpeg", choices=["cifar10_jpeg", "digits"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few hundred images, one epoch each")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared machine's cores are busy)")
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--recover-epochs", type=int)
    ap.add_argument("--arms", default="abc", help="which recoveries to run (a, b, c)")
    ap.add_argument("--seed-temperature", type=float, help="seed loss: the student's temperature")
    ap.add_argument("--seed-teacher-temperature", type=float, help="seed loss: the teacher's temperature")
    ap.add_argument("--lr", type=float, default=None, help="recovery learning rate (AdamW)")
    ap.add_argument("--augment", action="store_true", help="the recoveries' images are padded-cropped (4) and flipped")
    ap.add_argument(
        "--distill-views",
        action="store_true",
        help="the distillation arms distil on the SimCLR views (distill.views), teacher and student alike",
    )
    ap.add_argument("--variant", help="run the recoveries again under this name (other options), beside the first")
    args = ap.parse_args()
    if args.source == "cifar10_jpeg" and args.data is None:
        ap.error("--data PACK.npz is needed for cifar10_jpeg (or --source digits)")
    preset = ("cifar" if args.source == "cifar10_jpeg" else "digits") + ("-quick" if args.quick else "")
    if preset == "digits":
        preset = "digits-quick"
    p = copy.deepcopy(PRESETS[preset])
    p["teacher_epochs"] = args.teacher_epochs or p["teacher_epochs"]
    p["recover_epochs"] = args.recover_epochs or p["recover_epochs"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update({"machine": machine(), "preset": preset, "settings": p, "command": " ".join(sys.argv)})

    def save() -> None:
        write_json(results_path, results)
        write_text(out / "table.md", table(results) + "\n")

    # 0. the same network untrained: what the probes read off random features
    rec = recipe(args, p, "ssl_random", p["model"], [{"type": "evaluate"}])
    keep(results, "random", "the same net, randomly initialised (reference)", run(out / "random", rec))
    save()

    # 1. the self-supervised teacher
    teacher_stage = {
        "type": "train",
        "epochs": p["teacher_epochs"],
        "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_fraction": 0.1},
        "ssl": {"method": "simclr", "views": p["views"]},
    }
    rec = recipe(args, p, "ssl_teacher", p["model"], [teacher_stage])
    keep(results, "dense", "dense SimCLR teacher", run(out / "teacher", rec))
    save()
    teacher = stage_dir(out / "teacher")

    # 2. pruned to a measured 2x (one cut, least-squares recovery, no training)
    prune_stage = {
        "type": "prune",
        "width": {"importance": "l2", "round_to": 8},
        "target": {"latency_speedup": 2.0, "batch_size": 1, "depth_fractions": p["depth_fractions"]},
        "steps": 1,
        "epochs_per_step": 0,
        "distill": None,
    }
    rec = recipe(args, p, "ssl_prune", {"checkpoint": str(teacher)}, [prune_stage])
    keep(results, "pruned", "pruned to 2x, no training (least-squares recovery only)", run(out / "prune", rec))
    save()
    pruned = stage_dir(out / "prune")

    # 3. three label-free recoveries of the same pruned net
    for arm in args.arms:
        label, objective = ARMS[arm]
        objective = copy.deepcopy(objective)
        if "distill" in objective:
            objective["distill"]["teacher"] = str(teacher)
            if args.distill_views:
                objective["distill"]["views"] = p["views"]
            loss = objective["distill"]["losses"][0]
            if loss["name"] == "seed":
                if args.seed_temperature:
                    loss["temperature"] = args.seed_temperature
                if args.seed_teacher_temperature:
                    loss["teacher_temperature"] = args.seed_teacher_temperature
        else:
            objective["ssl"]["views"] = p["views"]
        lr = args.lr or 1e-3
        stage = {
            "type": "finetune",
            "epochs": p["recover_epochs"],
            "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4},
            "schedule": {"name": "cosine", "warmup_fraction": 0.1},
            **objective,
        }
        key = arm if args.variant is None else f"{arm}:{args.variant}"
        if args.variant is not None:
            label = f"{label}, {args.variant}"
        rec = recipe(args, p, f"ssl_recover_{arm}", {"checkpoint": str(pruned)}, [stage])
        if args.augment:  # (the ssl objective draws its own views: this changes the distillation arms only)
            rec = rec.model_copy(update={"data": rec.data.model_copy(update={"augment": AUGMENT})})
        keep(results, key, label, {**run(out / f"recover_{key.replace(':', '-')}", rec), "objective": objective})
        results[key].update(lr=lr, augment=args.augment, command=" ".join(sys.argv))
        save()

    # 4. every network's ONNX timed back to back with the dense teacher's
    shape = tuple(load_checkpoint(teacher)[1].input_shape)
    dense = onnx_of(load_checkpoint(teacher)[0], shape)
    folders = {"pruned": out / "prune"}
    folders.update(
        {k: out / f"recover_{k.replace(':', '-')}" for k in results if k[:1] in ARMS and k[1:2] in ("", ":")}
    )
    for key, folder in folders.items():
        if "speed" not in results[key]:
            model = load_checkpoint(stage_dir(folder))[0]
            results[key]["speed"] = side_by_side(
                onnx_of(model, shape), dense, shape, batch_sizes=(1,), pairs=p["pairs"]
            )
            save()
    print(table(results))


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f} min"


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get("metrics", {}).get(key)
    return "-" if v is None else f"{v:.2f}"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| network | kNN top-1 % | linear probe top-1 % | speedup bs1 (min-max) | params | MACs | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    arms = sorted(k for k in results if k[:1] in ARMS and k[1:2] in ("", ":"))
    for key in ["random", "dense", "pruned", *arms]:
        row = results.get(key)
        if row is None:
            continue
        sp = row.get("speed", {}).get("bs1")
        speed = (
            "1.00x"
            if key in ("dense", "random")
            else (
                "-"
                if sp is None
                else f"{sp['speedup']:.2f}x ({sp['speedup_min']:.2f}-{sp['speedup_max']:.2f}), load {sp['load1']:.1f}"
            )
        )
        secs = row.get("seconds")
        lines.append(
            f"| {row['label']} | {_cell(row, 'knn_top1')} | {_cell(row, 'linear_top1')} | {speed} | "
            f"{row['params'] / 1e3:.1f}k | {row['macs'] / 1e6:.1f}M | {_minutes(secs)} |"
        )
    m = results.get("machine")
    if m:
        lines += ["", f"Machine: {machine_line(m)}.", f"Command: `{results.get('command', '')}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
