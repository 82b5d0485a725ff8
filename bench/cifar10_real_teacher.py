"""CIFAR-10 on a real trained model: how much accuracy survives at how much *measured* speedup,
for the same fine-tuning budget, distillprune against naive peers (issue 10).

The teacher is the user's model, a trained ResNet-56 checkpoint (``--teacher``). Rows:
  teacher    evaluated as it is (fp32, CPU, the library's ``evaluate``)
  tp_l2      1. Torch-Pruning's own API: L2 group magnitude (``GroupMagnitudeImportance(p=2)``), one uniform
                ratio, its default rounding; the ratio bisected to ~2x fewer MACs; Hinton KD fine-tuning
  tp_l2_r8   2. the same with ``round_to=8``
  drop       3. layer dropping: the first ``--keep-blocks`` blocks of each stage (a ResNet-20 shape for
                ResNet-56) initialised from the teacher's weights, as DistilBERT from BERT; KD fine-tuning
  dp_2x/3x/4x  4. distillprune through its recipe path (``pipeline.execute``), a *measured* latency target
                (``target: {latency_speedup: X}`` on a prune stage with KD), KD fine-tuning, ONNX export
  trainer    images/s of distillprune's KD fine-tuning against a plain eager KD loop (``_trainer_line``)
  e0_2x/3x   E = 0: the planned cut, then recovery only (<= ``--calib`` training images, no gradient step),
             an ablation of BatchNorm re-estimation, bias compensation and least squares (``_recovery_e0``)

Every row fine-tunes for the same E epochs (``--epochs``, all training images, crop + flip) and is evaluated on
the whole test split: the peers with one-cycle SGD at ``--lr``, the distillprune rows with what a user's recipe
gets when it sets no optimizer key (the fine-tune regime of ``train.policy``; ``--dp-lr`` to override).
Latency: each row's ONNX and the teacher's ONNX timed back to back in ``--pairs`` pairs on ONNX Runtime CPU
(1 intra-op thread), batch 1 and 32: median speedup with its min-max spread. Results merge into
``OUT/results.json`` (``--rows`` runs a subset), the table is printed and written to ``OUT/table.md``.

  python bench/cifar10_real_teacher.py                      # everything, E = 1, CPU
  python bench/cifar10_real_teacher.py --rows teacher,trainer,tp_l2,tp_l2_r8,drop
  python bench/cifar10_real_teacher.py --rows tp_l2,drop --retime    # re-time rows (no training), e.g. when
                                                                     # the machine is quieter than it was
  python bench/cifar10_real_teacher.py --quick --source npz --data tiny.npz --teacher tiny_ckpt  # no claims
GPU (``--gpu``, see bench/gpu.sh): bf16, channels-last, torch.compile, data on the GPU, larger E, plus
CUDA-graph latency at batch 256 (side by side with the teacher).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp
from _common import (
    HINTON_KD,
    Timer,
    add_run,
    fmt_spread,
    kd_finetune,
    load_results,
    load_teacher,
    machine,
    machine_line,
    mean_run,
    onnx_of,
    render_table,
    save_results,
    side_by_side,
    size_of,
    write_table,
)
from _recovery_e0 import e0_row, e0_table
from _trainer_line import render_trainer_line, trainer_line

import distillprune as dp
from distillprune.core.config import validate
from distillprune.core.reporting import to_jsonable
from distillprune.data import DataConfig, load_data
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import export_onnx
from distillprune.measure.latency import LatencyConfig, torch_latency
from distillprune.pipeline import execute
from distillprune.recipes.schema import Recipe
from distillprune.train import RuntimeConfig, evaluate
from distillprune.train.device import resolve_device

PEERS = ["tp_l2", "tp_l2_r8", "drop"]
DP = {"dp_2x": 2.0, "dp_3x": 3.0, "dp_4x": 4.0}
E0 = {"e0_2x": 2.0, "e0_3x": 3.0}
ROWS = ["teacher", "trainer", *PEERS, *DP, *E0]
LABELS = {
    "teacher": "teacher",
    "tp_l2": "1. Torch-Pruning L2, default rounding",
    "tp_l2_r8": "2. Torch-Pruning L2, round_to=8",
    "drop": "3. layer dropping + KD",
    "dp_2x": "4. distillprune, target 2x",
    "dp_3x": "4. distillprune, target 3x",
    "dp_4x": "4. distillprune, target 4x",
}
STATED_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # the model's README (its training)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    ap.add_argument("--source", default="cifar10_jpeg", help="data source: cifar10_jpeg | npz | cifar10_bin")
    ap.add_argument("--teacher", default="../shared/models/cifar10-resnet56", help="checkpoint folder")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning budget E of every row (1; --gpu 10)")
    ap.add_argument("--lr", type=float, default=None, help="peak one-cycle lr of every row (0.05 at batch 128)")
    ap.add_argument("--batch-size", type=int, default=None, help="128 (CPU) / 512 (--gpu)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the distillprune rows")
    ap.add_argument("--rows", default="all", help=f"comma list of {ROWS}, or all")
    ap.add_argument("--out", default="bench_out/real_teacher")
    ap.add_argument("--runs-dir", default=None, help="the rows' ONNX files and run folders (default: OUT/runs)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    ap.add_argument("--pairs", type=int, default=5, help="side-by-side latency pairs per batch size")
    ap.add_argument("--keep-blocks", type=int, default=3, help="layer dropping: blocks kept per stage")
    ap.add_argument("--mac-target", type=float, default=2.0, help="Torch-Pruning rows: dense / pruned MACs")
    ap.add_argument(
        "--depth-fractions",
        type=float,
        nargs="+",
        default=None,
        help="distillprune rows: target.depth_fractions (default: the library's)",
    )
    ap.add_argument(
        "--refits",
        type=int,
        default=None,
        help="distillprune rows: target.refits (default: the library's; --quick: 4, as a tiny net's "
        "timings are mostly per-call overhead and noise)",
    )
    ap.add_argument("--calib", type=int, default=1024, help="e0 rows: calibration images (training split)")
    ap.add_argument("--damp", type=float, default=1e-3, help="e0 rows: ridge of the least-squares re-fits")
    ap.add_argument("--positions", type=int, default=64, help="e0 rows: conv output positions per image")
    ap.add_argument("--e0-variants", default=None, help="e0 rows: comma list of variants (default: all)")
    ap.add_argument(
        "--plan-recovery",
        action="store_true",
        help="e0 rows: target.plan_recovery (the planner compares candidates after least squares; default: after "
        "BatchNorm re-estimation, the chosen plan recovered once)",
    )
    ap.add_argument("--replan", action="store_true", help="e0 rows: plan again even if a plan is cached")
    ap.add_argument(
        "--rank",
        action="store_true",
        help="e0 rows: also score every candidate the planner estimates on the test split (with --plan-recovery: "
        "recovered, as it estimates them), for the rank correlation of its estimate with E = 0 test top-1",
    )
    ap.add_argument(
        "--block-choice", default=None, help="distillprune and e0 rows: target.block_choice (kd | recoverability)"
    )
    ap.add_argument(
        "--fixed-plan", default=None, help="e0 rows: 'BLOCKS:PREFIX,...' instead of the planner (see _recovery_e0)"
    )
    ap.add_argument(
        "--dp-recovery",
        default=None,
        help="distillprune rows: prune.recovery.method (lstsq | bias | none; default: the library's)",
    )
    ap.add_argument(
        "--dp-lr", type=float, default=None, help="distillprune rows: peak lr (default: the fine-tune regime's)"
    )
    ap.add_argument(
        "--dp-schedule", default=None, help="distillprune rows: onecycle | cosine | constant (default: the library's)"
    )
    ap.add_argument(
        "--aligned",
        type=float,
        default=None,
        help="distillprune rows: add channel-aligned feature KD at this weight (the epochs move into the prune "
        "stage, where the kept channels are known)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="distillprune rows: prune steps inside the budget (the E epochs in the prune stage, E/steps each, "
        "one lr schedule over the stage)",
    )
    ap.add_argument("--trainer-steps", type=int, default=20)
    ap.add_argument("--trainer-rounds", type=int, default=3)
    ap.add_argument("--trainer-compile", action="store_true", help="trainer line: also a torch.compile'd teacher")
    ap.add_argument(
        "--check-norm",
        action="store_true",
        help="teacher row: also evaluate with the normalisation the model was trained with",
    )
    ap.add_argument("--gpu", action="store_true", help="train on CUDA (bf16, channels-last, compile); GPU latency")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new row after this many seconds")
    ap.add_argument(
        "--retime",
        action="store_true",
        help="re-time the --rows already in the results side by side (no training): for a quieter machine",
    )
    ap.add_argument("--quick", action="store_true", help="a few hundred images, tiny budget: no claims (tests)")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    a = ap.parse_args(argv)
    if a.gpu and not torch.cuda.is_available() and not a.quick:
        raise SystemExit("--gpu: no CUDA device here (only --gpu --quick runs without one)")
    a.epochs = a.epochs or (10 if a.gpu and not a.quick else 1)
    a.batch_size = a.batch_size or (512 if a.gpu and not a.quick else 32 if a.quick else 128)
    a.lr = a.lr or 0.05 * a.batch_size / 128
    if a.quick:
        a.limit_train, a.limit_test = a.limit_train or 192, a.limit_test or 64
        a.pairs, a.trainer_steps, a.trainer_rounds = min(a.pairs, 2), min(a.trainer_steps, 2), 1
        a.refits = 4 if a.refits is None else a.refits
        a.epochs = 1
    return a


def runtime(a: argparse.Namespace) -> RuntimeConfig:
    cuda = a.gpu and torch.cuda.is_available()
    return RuntimeConfig(
        device="auto",
        amp="bf16" if cuda else "none",
        channels_last=cuda,
        compile=cuda,
        threads=a.threads,
        progress=False,
        tensorboard=False,
    )


def latency_cfg(a: argparse.Namespace) -> LatencyConfig:
    if a.quick:
        return LatencyConfig(threads=a.ort_threads, warmup=1, repeats=1, min_window_s=0.005)
    return LatencyConfig(threads=a.ort_threads, warmup=5, repeats=5, min_window_s=0.1)


# ------------------------------------------------------------------------------------------- students
def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The model's last Linear (``fc`` of a ResNet, ``classifier[1]`` of a MobileNetV2): its outputs are the
    classes, so no peer may cut them."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise SystemExit(f"{type(model).__name__}: no Linear classifier to keep out of the pruning")
    return linears[-1]


def tp_prune(teacher: torch.nn.Module, shape: tuple, ratio: float, round_to: int | None) -> torch.nn.Module:
    """Torch-Pruning's own API on a copy: L2 group magnitude, one uniform ``ratio``, classifier kept."""
    m = copy.deepcopy(teacher).cpu().eval().requires_grad_(True)  # TP traces autograd: unfreeze the copy
    tp.pruner.MetaPruner(
        m,
        torch.zeros(1, *shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[classifier(m)],
        round_to=round_to,
    ).step()
    return m


def tp_prune_to(teacher: torch.nn.Module, shape: tuple, mac_ratio: float, round_to: int | None, iters: int = 12):
    """``tp_prune`` with the ratio bisected to ``mac_ratio`` fewer MACs (the smallest ratio that reaches it)."""
    dense = size_of(teacher, shape)["macs"]
    lo, hi, best = 0.0, 0.9, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = tp_prune(teacher, shape, mid, round_to)
        if dense / size_of(m, shape)["macs"] >= mac_ratio:
            hi, best = mid, (m, mid)
        else:
            lo = mid
    if best is None:
        raise SystemExit(f"Torch-Pruning cannot reach {mac_ratio}x fewer MACs with a uniform ratio <= 0.9")
    return best[0].eval(), {"tp_ratio": round(best[1], 4), "round_to": round_to}


def dropped_layers(teacher: torch.nn.Module, data, keep: int):
    """The teacher's first ``keep`` blocks of each stage, stem and head, with the teacher's weights."""
    stages = [getattr(teacher, f"layer{s + 1}") for s in range(teacher.num_stages)]
    widths = [st[0].conv1.out_channels for st in stages]
    if any(len(st) <= keep for st in stages):
        raise SystemExit(f"--keep-blocks {keep}: every stage must have more blocks than that")
    student = dp.build_model("resnet", data.num_classes, data.input_shape, widths=widths, blocks=[keep] * len(widths))
    sd = teacher.state_dict()
    student.load_state_dict({k: sd[k] for k in student.state_dict()})
    return student.eval(), {"blocks_per_stage": keep}


# ------------------------------------------------------------------------------------------- measuring
def latency_vs_teacher(model: torch.nn.Module | None, onnx, ctx: dict, a) -> dict:
    """ONNX Runtime CPU side by side with the teacher; on a GPU also CUDA-graph latency (needs ``model``)."""
    lat = side_by_side(
        onnx, ctx["teacher_onnx"], ctx["shape"], pairs=a.pairs, threads=a.ort_threads, cfg=latency_cfg(a)
    )
    if a.gpu and torch.cuda.is_available() and model is not None:
        lat["gpu_bs256"] = gpu_side_by_side(model, ctx["teacher"], ctx["shape"], a.pairs)
    return lat


def gpu_side_by_side(model, teacher, shape, pairs: int) -> dict:
    """bf16 CUDA-graph latency at batch 256 (the library's ``torch_latency``), back to back with the teacher."""
    cand, ref = [], []
    for i in range(pairs):
        order = [(teacher, ref), (model, cand)]
        for m, sink in order if i % 2 == 0 else order[::-1]:
            sink.append(torch_latency(copy.deepcopy(m), shape, 256, mode="graph"))
    ratios = [r / c for r, c in zip(ref, cand, strict=True)]
    return {
        "ms": sorted(cand)[len(cand) // 2],
        "ms_min": min(cand),
        "ms_max": max(cand),
        "speedup": sorted(ratios)[len(ratios) // 2],
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
    }


def runs_dir(a) -> Path:
    """Where rows keep their ONNX files (and the distillprune rows their run folders)."""
    return Path(a.runs_dir or Path(a.out) / "runs")


def top1(model: torch.nn.Module, data, ctx: dict) -> float:
    """The library's evaluation, on the device the rows train on (bf16 autocast on a GPU)."""
    return evaluate(model.to(resolve_device(ctx["rt"])), data, batch_size=500, runtime=ctx["rt"])


def teacher_row(ctx: dict, a) -> dict:
    t = ctx["teacher"]
    rec = {"name": ctx["spec"].name, "top1": top1(t, ctx["data"], ctx), **size_of(t, ctx["shape"])}
    if a.check_norm:
        d = copy.copy(ctx["data"])
        d.mean, d.std = (torch.tensor(v) for v in STATED_NORM)
        rec["top1_stated_norm"] = top1(t, d, ctx)
        rec["norm_computed"] = [ctx["data"].mean.tolist(), ctx["data"].std.tolist()]
    rec["latency"] = latency_vs_teacher(t, ctx["teacher_onnx"], ctx, a)  # against itself: the noise floor
    return rec


def peer_row(key: str, ctx: dict, a, seed: int = 0) -> dict:
    t, data, shape = ctx["teacher"], ctx["data"], ctx["shape"]
    if key == "drop":
        model, info = dropped_layers(t, data, a.keep_blocks)
    else:
        model, info = tp_prune_to(t, shape, a.mac_target, 8 if key == "tp_l2_r8" else None, 6 if a.quick else 12)
    rec = {**info, **size_of(model, shape), "top1_before": top1(model, data, ctx)}
    rec.update(
        kd_finetune(
            model, t, data, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, runtime=ctx["rt"], compile_teacher=a.gpu
        )
    )
    onnx = export_onnx(model.cpu().float(), shape, runs_dir(a) / f"{key}_seed{seed}.onnx")
    rec["onnx"] = str(onnx)
    rec["latency"] = latency_vs_teacher(model, onnx, ctx, a)
    return rec


def dp_recipe(target: float, a, seed: int, model_name: str) -> Recipe:
    """The user's recipe: the checkpoint, a prune stage with a measured latency target (KD from the dense
    model), KD fine-tuning for the rest of the E epochs, ONNX export. Validated like a YAML recipe."""
    tgt: dict = {"latency_speedup": target}
    if a.depth_fractions is not None:
        tgt["depth_fractions"] = a.depth_fractions
    if a.refits is not None:
        tgt["refits"] = a.refits
    if a.block_choice is not None:
        tgt["block_choice"] = a.block_choice
    lat = latency_cfg(a).model_dump()
    distill = {"losses": [HINTON_KD], "compile_teacher": a.gpu}
    # the optimizer, schedule, keep-best and BatchNorm keys left unset: the fine-tune regime decides
    # (train.policy), as in a user's recipe; --dp-lr / --dp-schedule set them for an ablation
    opt = {
        **({"optimizer": {"lr": a.dp_lr}} if a.dp_lr else {}),
        **({"schedule": {"name": a.dp_schedule}} if a.dp_schedule else {}),
    }
    prune: dict = {
        "type": "prune",
        "target": tgt,
        "width": {"importance": "taylor", "round_to": 8},
        "distill": distill,
        **opt,
    }
    if a.dp_recovery:
        prune["recovery"] = {"method": a.dp_recovery}
    inside = a.aligned is not None or a.steps is not None  # the budget is spent in the prune stage
    if inside:
        steps = a.steps or 1
        losses = [HINTON_KD] + ([{"name": "aligned", "weight": a.aligned}] if a.aligned else [])
        prune.update(steps=steps, epochs_per_step=a.epochs / steps, lr_span="stage")
        prune["distill"] = {**distill, "losses": losses}
    stages = [prune]
    if not inside:
        stages.append({"type": "finetune", "epochs": a.epochs, "distill": distill, **opt})
    raw = {
        "name": f"bench-dp-{target:g}x",
        "seed": seed,
        "model": {"name": model_name, "checkpoint": a.teacher},
        "data": {
            "source": a.source,
            "path": a.data,
            "batch_size": a.batch_size,
            "limit_train": a.limit_train,
            "limit_test": a.limit_test,
            "augment": {"crop_padding": 4, "hflip": True},
        },
        "runtime": runtime(a).model_dump(),
        "measure": {**lat, "enabled": False},
        "stages": [*stages, {"type": "export"}],
    }
    return validate(Recipe, raw, where="bench dp recipe")


def dp_row(key: str, ctx: dict, a, seed: int) -> dict:
    run_dir = runs_dir(a) / f"{key}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    with Timer() as wall:
        state = execute(dp_recipe(DP[key], a, seed, ctx["spec"].name), run_dir, data=ctx["data"], quiet=True)
    st = {s.type: s for s in state.report.stages}
    prune = st["prune"]
    fine = st.get("finetune", prune)  # the budget spent inside the prune stage: its accuracy is the row's
    stages = (prune,) if fine is prune else (prune, fine)
    runs = [t for t in (getattr(s.details, "training", None) for s in stages) if t is not None]
    train_s = sum(t.train_seconds for t in runs)
    images = sum(t.train_seconds * t.train_images_per_s for t in runs)
    details = prune.details_dict()
    rec = {
        "target": DP[key],
        "plan": to_jsonable(details.get("plan")),
        "removed_blocks": details.get("removed_blocks"),
        "planner_log": details.get("log"),
        "top1_before": prune.accuracy if fine is not prune else details.get("top1_after_cut"),
        "top1": fine.accuracy,
        "settings": {k: getattr(a, k) for k in ("dp_recovery", "dp_lr", "dp_schedule", "aligned", "steps")},
        **size_of(state.model, ctx["shape"]),
        "train_s": train_s,
        "img_s": images / max(train_s, 1e-9),
        "prune_stage_s": prune.seconds,
        "pipeline_s": wall.seconds,
        "epochs": a.epochs,
    }
    rec["onnx"] = str(run_dir / "model.onnx")
    rec["latency"] = latency_vs_teacher(state.model, rec["onnx"], ctx, a)
    return rec


def trainer_row(ctx: dict, a) -> dict:
    student, info = tp_prune_to(ctx["teacher"], ctx["shape"], a.mac_target, None, 6 if a.quick else 12)
    r = trainer_line(
        ctx["teacher"],
        student,
        ctx["data"],
        batch_size=a.batch_size,
        steps=a.trainer_steps,
        rounds=a.trainer_rounds,
        lr=a.lr,
        runtime=ctx["rt"],
        compile_teacher=a.trainer_compile,
        teacher_name=ctx["spec"].name,
        warmup=not (a.quick or a.gpu),
        unfolded=not a.gpu,
    )
    return {
        **r,
        "student": f"row 1's network (Torch-Pruning L2 ratio {info['tp_ratio']}, "
        f"{ctx['teacher_macs'] / size_of(student, ctx['shape'])['macs']:.2f}x fewer MACs)",
    }


# ------------------------------------------------------------------------------------------- table
def _ms(row: dict, bs: str) -> str:
    return fmt_spread(row.get("latency", {}).get(bs), "ms", ".3f" if bs == "bs1" else ".2f")


def _speedup(row: dict, bs: str) -> str:
    return fmt_spread(row.get("latency", {}).get(bs), "speedup", ".2f", "x")


def _mac_ratio(row: dict, t: dict) -> float:
    return t["macs"] / row["macs"]


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


COLUMNS = [
    ("row", None),
    ("top-1 before FT %", lambda r, t: _pct(r.get("top1_before"))),
    ("top-1 %", lambda r, t: _pct(r.get("top1"))),
    ("Δ vs teacher pp", lambda r, t: "-" if r is t else f"{r['top1'] - t['top1']:+.2f}"),
    ("params", lambda r, t: f"{r['params'] / 1e6:.3f}M"),
    ("MACs", lambda r, t: f"{r['macs'] / 1e6:.1f}M"),
    ("ORT bs1 ms", lambda r, t: _ms(r, "bs1")),
    ("ORT bs32 ms", lambda r, t: _ms(r, "bs32")),
    ("speedup bs1", lambda r, t: _speedup(r, "bs1")),
    ("speedup bs32", lambda r, t: _speedup(r, "bs32")),
    ("target", lambda r, t: f"{r['target']:g}x" if r.get("target") else "-"),
    ("MAC ratio", lambda r, t: f"{_mac_ratio(r, t):.2f}x"),
    (
        "realised/MAC bs1",
        lambda r, t: (
            f"{r['latency']['bs1']['speedup'] / _mac_ratio(r, t):.2f}" if r.get("latency", {}).get("bs1") else "-"
        ),
    ),
    ("FT s", lambda r, t: f"{r['train_s']:.0f}" if r.get("train_s") is not None else "-"),
    ("FT img/s", lambda r, t: f"{r['img_s']:.0f}" if r.get("img_s") is not None else "-"),
]
GPU_COLUMNS = [
    ("GPU bs256 ms", lambda r, t: fmt_spread(r.get("latency", {}).get("gpu_bs256"), "ms", ".3f")),
    ("GPU speedup", lambda r, t: fmt_spread(r.get("latency", {}).get("gpu_bs256"), "speedup", ".2f", "x")),
]


def table(results: dict) -> str:
    t = results["teacher"][0]
    rows = [(f"teacher ({t.get('name', '?')})", t)]
    notes = []
    for key in [*PEERS, *DP]:
        runs = [r for r in results.get(key, []) if "error" not in r]
        rows += [(LABELS[key] + (f" (n={len(runs)})" if len(runs) > 1 else ""), mean_run(runs))] if runs else []
        notes += [f"{LABELS[key]}: {r['error']}" for r in results.get(key, []) if "error" in r]
    cols = COLUMNS + (GPU_COLUMNS if "gpu_bs256" in t.get("latency", {}) else [])
    text = render_table(rows, cols, t)
    if t.get("top1_stated_norm") is not None:
        mean, std = t["norm_computed"]
        text += (
            f"\n\nTeacher top-1 with the normalisation computed from the training images (the library's; mean "
            f"{', '.join(f'{v:.4f}' for v in mean)}, std {', '.join(f'{v:.4f}' for v in std)}): "
            f"{t['top1']:.2f}%; with the one the model was trained with (its README; mean "
            f"{', '.join(map(str, STATED_NORM[0]))}, std {', '.join(map(str, STATED_NORM[1]))}): "
            f"{t['top1_stated_norm']:.2f}%."
        )
    if notes:
        text += "\n\nRows without a result: " + "; ".join(notes)
    loads = [d["load1"] for _, r in rows for d in r.get("latency", {}).values() if "load1" in d]
    if loads:
        text += (
            f"\n\nLatency: ONNX Runtime CPU, 1 intra-op thread, each row timed back to back with the teacher "
            f"in {t['latency']['bs1']['pairs']} pairs (median, min-max); the teacher row is the teacher "
            f"against itself (the noise floor). 1-min load average when timed: {min(loads):.1f}-{max(loads):.1f}."
        )
    if "trainer" in results:
        r = results["trainer"][0]
        text += "\n\n" + render_trainer_line(r, r["student"])
    e0 = e0_table(results)
    return text + ("\n\nE = 0 (recovery only, no gradient step), top-1 %:\n\n" + e0 if e0 else "")


# ------------------------------------------------------------------------------------------- main
def context(a) -> dict:
    torch.set_num_threads(a.threads)
    data = load_data(DataConfig(source=a.source, path=a.data, limit_train=a.limit_train, limit_test=a.limit_test))
    teacher, spec = load_teacher(a.teacher)
    shape = tuple(data.input_shape)
    ctx = {
        "data": data,
        "teacher": teacher,
        "spec": spec,
        "shape": shape,
        "rt": runtime(a),
        "teacher_onnx": onnx_of(teacher, shape),
        "teacher_macs": size_of(teacher, shape)["macs"],
        "lat": latency_cfg(a),
    }
    ctx["time"] = lambda m: latency_vs_teacher(m, onnx_of(m.cpu().eval(), shape), ctx, a)  # e0 rows
    return ctx


def onnx_for(key: str, rec: dict, ctx: dict, a):
    """A row's ONNX file, or its architecture rebuilt from the record (latency depends on nothing else)."""
    if key == "teacher":
        return ctx["teacher_onnx"]
    if rec.get("onnx") and Path(rec["onnx"]).is_file():
        return rec["onnx"]
    if key == "drop":
        model = dropped_layers(ctx["teacher"], ctx["data"], rec["blocks_per_stage"])[0]
    elif key in ("tp_l2", "tp_l2_r8"):
        model = tp_prune(ctx["teacher"], ctx["shape"], rec["tp_ratio"], rec["round_to"])
    else:
        raise SystemExit(f"--retime: {key} has no ONNX file ({rec.get('onnx')}) to time")
    if size_of(model, ctx["shape"])["macs"] != rec["macs"]:
        raise SystemExit(f"--retime: the rebuilt {key} does not match the recorded one (MACs differ)")
    return onnx_of(model, ctx["shape"])


def retime(results: dict, wanted: list[str], ctx: dict, a) -> None:
    for key in wanted:
        for rec in results.get(key, []) if key != "trainer" else []:
            if "error" not in rec:
                rec["latency"] = latency_vs_teacher(None, onnx_for(key, rec, ctx, a), ctx, a)
                rec["retimed"] = time.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{key} seed {rec['seed']}: bs1 {rec['latency']['bs1']['speedup']:.2f}x", flush=True)


def run_row(key: str, seed: int, ctx: dict, a) -> dict:
    if key == "teacher":
        return teacher_row(ctx, a)
    if key == "trainer":
        return trainer_row(ctx, a)
    if key in PEERS:
        torch.manual_seed(seed)
        return peer_row(key, ctx, a, seed)
    try:
        return dp_row(key, ctx, a, seed)
    except DistillpruneError as e:  # e.g. a target no plan reaches: the table says so
        return {"error": str(e).splitlines()[0][:300], "target": DP[key]}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    t_start = time.perf_counter()
    if a.quick:
        print("quick: no claims (a few hundred images, a tiny budget; this only checks that the script runs)")
    wanted = ROWS if a.rows == "all" else a.rows.split(",")
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {ROWS}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = load_results(path)
    ctx = context(a)
    results["retime_setup" if a.retime else "setup"] = {
        "machine": machine(),
        "epochs": a.epochs,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "train_images": len(ctx["data"].train),
        "test_images": len(ctx["data"].test),
        "threads": a.threads,
        "ort_threads": a.ort_threads,
        "pairs": a.pairs,
        "gpu": a.gpu,
        "quick": a.quick,
        "command": " ".join(sys.argv),
    }
    if "teacher" not in wanted and "teacher" not in results:
        wanted = ["teacher", *wanted]  # every table needs the teacher row
    if a.retime:
        retime(results, wanted, ctx, a)
        save_results(path, results)
        wanted = []
    longest = 0.0  # the longest row so far: a row is started only if one as long still fits the budget
    for key in wanted:
        for seed in range(a.seeds if key in DP else 1):
            if a.budget_s is not None and time.perf_counter() - t_start + longest > a.budget_s:
                print(f"budget of {a.budget_s:.0f} s: {key} seed {seed} not started", flush=True)
                continue
            if key in E0:
                cached = None if a.replan or not results.get(key) else results[key][-1]
                results.pop(key, None)
                for rec in e0_row(E0[key], ctx, a, cached, top1):  # one record per variant, saved as it comes
                    results[key] = [rec]
                    save_results(path, results)
                continue
            with Timer() as tm:
                rec = run_row(key, seed, ctx, a)
            longest = max(longest, tm.seconds if key != "teacher" else 0.0)
            add_run(results, key, {**rec, "row_s": tm.seconds}, seed=seed)
            save_results(path, results)
            write_table(out / "table.md", table(results))  # a run cut short still leaves its table
            print(
                f"[{time.perf_counter() - t_start:7.0f} s] {key} seed {seed} done in {tm.seconds:.0f} s"
                + (f": top-1 {rec['top1']:.2f}%" if rec.get("top1") is not None else "")
                + (f" ({rec['error']})" if "error" in rec else ""),
                flush=True,
            )
    text = table(results) + f"\n\nMachine: {machine_line(results['setup']['machine'])}."
    if a.quick:
        text = "quick: no claims\n\n" + text
    write_table(out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
