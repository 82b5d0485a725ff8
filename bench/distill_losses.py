"""Distillation losses, head to head: one teacher, one student architecture, the same epochs for every
row; each row is a recipe ``distill`` stage (or a ``train`` stage for CE only) run by the pipeline.

Rows: CE only (student from scratch) · KD · KD + logit standardisation · FitNets · AT · RKD · PKT · DKD ·
DIST · CRD · online/mutual (DML: student and a fresh teacher-sized peer trained together, no pre-trained
teacher) · label-free (KD with the training labels withheld). Every offline row is run a second time
with ``distill.cache: true`` (teacher outputs precomputed once): the table gives both training
throughputs, the speedup, and the cached run's top-1 (equal to the uncached one when there is no
augmentation: the cache changes the cost, not the result).

Full run (GPU; still owed): CIFAR-10, ResNet-56 -> ResNet-20, standard crop+flip augmentation (so no
cache column).  python bench/distill_losses.py --data PACK.npz
Reduced run (CPU, 2 cores): sklearn digits with 400 training images, digits_cnn (32/64/128, 2 blocks a
stage) -> digits_cnn (8/16/32, 1 block a stage), 3 seeds.  python bench/distill_losses.py --reduced
Smoke (tests): tiny subset, 1 epoch, 1 seed.  python bench/distill_losses.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.config import validate
from distillprune.data import DataConfig, load_data
from distillprune.pipeline import execute
from distillprune.recipes.schema import Recipe

PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        source="cifar10_jpeg",
        teacher=("resnet56", {}),
        student=("resnet20", {}),
        teacher_epochs=240,
        epochs=240,
        seeds=1,
        batch_size=128,
        lr=0.05,
        grad_clip=None,
        teacher_lr=0.1,
        limit_train=None,
        limit_test=None,
        augment={"crop_padding": 4, "hflip": True},
        queue=16384,
        at_pairs=["layer1", "layer2", "layer3"],
    ),
    "reduced": dict(
        source="digits",
        teacher=("digits_cnn", {}),
        student=("digits_cnn", {"widths": [8, 16, 32], "blocks": [1, 1, 1]}),
        teacher_epochs=30,
        epochs=20,
        seeds=3,
        batch_size=64,
        lr=0.1,
        grad_clip=5.0,  # the paper weights of FitNets / AT diverge at lr 0.1 on these tiny nets without it
        teacher_lr=0.1,
        limit_train=400,
        limit_test=None,
        augment={},
        queue=256,
        at_pairs=["layer1", "layer2", "layer3"],
    ),
    "smoke": dict(
        source="digits",
        teacher=("digits_cnn", {"widths": [16, 32, 32], "blocks": [1, 1, 1]}),
        student=("digits_cnn", {"widths": [8, 16, 16], "blocks": [1, 1, 1]}),
        teacher_epochs=1,
        epochs=1,
        seeds=1,
        batch_size=64,
        lr=0.1,
        grad_clip=5.0,
        teacher_lr=0.1,
        limit_train=192,
        limit_test=96,
        augment={},
        queue=64,
        at_pairs=["layer3"],
    ),
}


def rows(p: dict) -> dict[str, tuple[str, dict | None]]:
    """row key -> (label, distill config); None: plain cross-entropy training of the student."""
    return {
        "ce": ("CE only (no teacher)", None),
        "kd": ("KD (T=4, alpha=0.9)", {"losses": [{"name": "kd", "temperature": 4, "alpha": 0.9}]}),
        "kd_std": (
            "KD + logit standardisation (T=2, alpha=0.9)",
            {"losses": [{"name": "kd", "temperature": 2, "alpha": 0.9, "standardize": True}]},
        ),
        "fitnet": (
            "FitNets (CE + 100 x hint on layer3)",
            {"losses": [{"name": "ce"}, {"name": "fitnet", "weight": 100, "pairs": [["layer3", "layer3"]]}]},
        ),
        "at": (
            f"AT (CE + AT on {'/'.join(p['at_pairs'])}, beta=1000)",
            {"losses": [{"name": "ce"}, {"name": "at", "pairs": p["at_pairs"]}]},
        ),
        "fitnet_w1": (
            "FitNets, hint weight 1 (lowered; see notes)",
            {"losses": [{"name": "ce"}, {"name": "fitnet", "weight": 1, "pairs": [["layer3", "layer3"]]}]},
        ),
        "at_b10": (
            "AT, beta=10 (lowered; see notes)",
            {"losses": [{"name": "ce"}, {"name": "at", "pairs": p["at_pairs"], "beta": 10}]},
        ),
        "rkd": (
            "RKD (CE + RKD on pool, 25/50)",
            {"losses": [{"name": "ce"}, {"name": "rkd", "tap": "pool"}]},
        ),
        "pkt": (
            "PKT (CE + 30000 x PKT on pool)",
            {"losses": [{"name": "ce"}, {"name": "pkt", "weight": 30000, "tap": "pool"}]},
        ),
        "dkd": (
            "DKD (CE + DKD 1/8, T=4, weight ramp 0->1 over 10%)",
            {"losses": [{"name": "ce"}, {"name": "dkd", "weight": {"start": 0, "end": 1, "fraction": 0.1}}]},
        ),
        "dist": ("DIST (CE + DIST 2/2, T=4)", {"losses": [{"name": "ce"}, {"name": "dist"}]}),
        "crd": (
            f"CRD (CE + 0.8 x CRD on pool, queue {p['queue']})",
            {
                "losses": [
                    {"name": "ce"},
                    {"name": "crd", "weight": 0.8, "tap": "pool", "queue_size": p["queue"]},
                ]
            },
        ),
        "mutual": (
            "online / mutual (DML: CE + KL, T=1; fresh teacher-sized peer)",
            {
                "mode": "mutual",
                "peer": {"name": p["teacher"][0], "kwargs": p["teacher"][1]},
                "losses": [{"name": "ce"}, {"name": "kd", "temperature": 1, "alpha": 1}],
            },
        ),
        "label_free": (
            "label-free (KD, T=4, labels withheld)",
            {"losses": [{"name": "kd", "temperature": 4}]},
        ),
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz", help="data file (CIFAR-10 presets)")
    ap.add_argument("--reduced", action="store_true", help="CPU-sized run (see module doc)")
    ap.add_argument("--smoke", action="store_true", help="tiny subset, 1 epoch (tests)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the preset's)")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs of every row (default: preset's)")
    ap.add_argument("--rows", default="all", help="comma list of row keys, or all")
    ap.add_argument("--lr", type=float, default=None, help="student peak lr of every row (default: the preset's)")
    ap.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip of every row (default: preset's)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", default="bench_out/distill_losses", help="results.json goes here")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint folder: reused if present, else written")
    a = ap.parse_args()
    a.mode = "smoke" if a.smoke else "reduced" if a.reduced else "full"
    return a


def base_recipe(p: dict, a: argparse.Namespace, seed: int) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "name": "bench_distill",
        "seed": seed,
        "data": {
            "source": p["source"],
            "path": a.data if p["source"] != "digits" else None,
            "batch_size": p["batch_size"],
            "augment": p["augment"],
            "limit_train": p["limit_train"],
            "limit_test": p["limit_test"],
        },
        "runtime": {
            "device": "auto",
            "amp": "bf16" if cuda else "none",
            "channels_last": cuda,
            "threads": None if cuda else a.threads,
            "progress": False,
            "tensorboard": False,
        },
        "measure": {"enabled": False},
    }


def train_teacher(p: dict, a: argparse.Namespace, data) -> tuple[torch.nn.Module, dict]:
    """Train the teacher (seed 0), or reuse the checkpoint at --teacher if it exists (else save it there)."""
    if a.teacher and (Path(a.teacher) / "model.json").exists():
        model, _, meta = load_checkpoint(a.teacher)
        return model, meta["bench"]
    name, kw = p["teacher"]
    recipe = validate(
        Recipe,
        {
            **base_recipe(p, a, 0),
            "model": {"name": name, "kwargs": kw},
            "stages": [{"type": "train", "epochs": p["teacher_epochs"], "optimizer": {"lr": p["teacher_lr"]}}],
        },
    )
    state = execute(recipe, None, data=data, quiet=True)
    st = state.report.stages[-1]
    info = {"top1": st.accuracy, "img_s": st.details.training.train_images_per_s}
    if a.teacher:
        save_checkpoint(
            a.teacher,
            state.model.cpu(),
            ArchSpec(name, data.num_classes, list(data.input_shape), kw),
            bench=info,
        )
    return state.model, info


def run_row(
    p: dict, a: argparse.Namespace, key: str, cfg: dict | None, teacher, data, seed: int, cache: bool = False
) -> dict:
    raw = base_recipe(p, a, seed)
    sname, skw = p["student"]
    student = {"name": sname, "kwargs": skw}
    if cfg is None:
        raw.update(
            model=student,
            stages=[
                {
                    "type": "train",
                    "epochs": p["epochs"],
                    "optimizer": {"lr": p["lr"]},
                    "grad_clip": p["grad_clip"],
                }
            ],
        )
        model = None
    else:
        raw.update(
            model={"name": p["teacher"][0], "kwargs": p["teacher"][1]},
            stages=[
                {
                    "type": "distill",
                    "epochs": p["epochs"],
                    "student": student,
                    "distill": {**cfg, "cache": cache},
                    "optimizer": {"lr": p["lr"]},
                    "grad_clip": p["grad_clip"],
                }
            ],
        )
        model = copy.deepcopy(teacher)  # the current model; the distill stage's teacher: auto
    recipe = validate(Recipe, raw)
    rdata = data.without_labels() if key == "label_free" else data
    t0 = time.perf_counter()
    state = execute(recipe, None, model=model, data=rdata, quiet=True)
    st = state.report.stages[-1]
    return {
        "top1": st.accuracy,
        "img_s": st.details.training.train_images_per_s,
        "wall_s": time.perf_counter() - t0,
        "peer_top1": getattr(st.details, "peer_top1", None),
        "cache_s": getattr(st.details, "teacher_cache_seconds", None),
    }


def cacheable(p: dict, key: str, cfg: dict | None) -> bool:
    return cfg is not None and cfg.get("mode") != "mutual" and not any(p["augment"].values())


def main() -> int:
    a = parse()
    p = dict(PRESETS[a.mode])
    p["seeds"] = a.seeds or p["seeds"]
    p["epochs"] = a.epochs or p["epochs"]
    p["lr"] = a.lr or p["lr"]
    p["grad_clip"] = a.grad_clip or p["grad_clip"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(
        DataConfig(
            source=p["source"],
            path=a.data if p["source"] != "digits" else None,
            limit_train=p["limit_train"],
            limit_test=p["limit_test"],
        )
    )
    t_start = time.perf_counter()
    teacher, tinfo = train_teacher(p, a, data)
    table_rows = rows(p)
    wanted = list(table_rows) if a.rows == "all" else a.rows.split(",")
    results: dict[str, Any] = {"teacher": tinfo, "preset": a.mode, "rows": {}}
    for key in wanted:
        label, cfg = table_rows[key]
        for seed in range(p["seeds"]):
            r = {"plain": run_row(p, a, key, cfg, teacher, data, seed)}
            if cacheable(p, key, cfg):  # back to back, so both runs see the same machine load
                r["cached"] = run_row(p, a, key, cfg, teacher, data, seed, cache=True)
            results["rows"].setdefault(key, []).append(r)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(render(results, p, table_rows, data))
    return 0


def _mean_sd(xs: list[float], digits: int = 2) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def _arch(spec: tuple[str, dict]) -> str:
    name, kw = spec
    args = ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in kw.items())
    return f"{name}({args})" if args else name


def render(results: dict, p: dict, table_rows: dict, data) -> str:
    t = results["teacher"]
    head = [
        "method",
        "top-1 %",
        "train img/s",
        "img/s, teacher cache",
        "cache speedup",
        "cached top-1 %",
        "cache build s",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        f"| teacher {_arch(p['teacher'])}, {p['teacher_epochs']} epochs, seed 0 | {t['top1']:.2f} | "
        f"{t['img_s']:.0f} | | | | |",
    ]
    for key, runs in results["rows"].items():
        plain = [r["plain"] for r in runs]
        cached = [r["cached"] for r in runs if "cached" in r]
        label = table_rows[key][0]
        if key == "mutual" and plain[0]["peer_top1"] is not None:
            label += f"; peer top-1 {_mean_sd([r['peer_top1'] for r in plain])}"
        ips = statistics.mean(r["img_s"] for r in plain)
        cells = [label, _mean_sd([r["top1"] for r in plain]), f"{ips:.0f}"]
        if cached:
            cips = statistics.mean(r["img_s"] for r in cached)
            cells += [
                f"{cips:.0f}",
                f"{cips / ips:.2f}x",
                _mean_sd([r["top1"] for r in cached]),
                f"{statistics.mean(r['cache_s'] for r in cached):.2f}",
            ]
        else:
            cells += ["n/a"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    clip = f", grad-norm clip {p['grad_clip']}" if p["grad_clip"] else ""
    lines += [
        "",
        f"Student {_arch(p['student'])}: {p['epochs']} epochs in every row, one-cycle SGD peak lr "
        f"{p['lr']}{clip}, batch {p['batch_size']}; {len(data.train)} training / {len(data.test)} test"
        f" images ({p['source']}); top-1: mean ± sd over {p['seeds']} seed(s); img/s: training throughput,"
        f" mean over epochs and seeds (cache build time excluded, listed separately); whole run "
        f"{results['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
