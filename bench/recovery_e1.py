"""Fine-tuning after recovery on the real ResNet-56 at one fixed plan (issues 19 and 31): what a budget of KD
makes of the recovered start, one knob at a time.

The plan is read from an e0 row's results (``--plan``: ``bench/cifar10_real_teacher.py --rows e0_2x`` wrote
it), so every row starts from the very same cut. The cut is recovered once (``prune.recovery.recover_``, the
library's defaults) and the recovered weights are cached (``--e0-cache``), so a row costs only its training.
Each row then trains ``--epochs`` (fractions allowed) of KD through the library's trainer with the training
options the row names, resolved by the library's policy (``train.policy.settings``, regime ``finetune``):

  --regime-defaults       the fine-tune regime's defaults for everything the row leaves unset
  --old-defaults          the library before issue 31: one-cycle (15% warm-up) at lr 0.05, no BatchNorm
                          re-normalisation, no held-out checks (what the benchmark's rows used)
  --lr, --schedule, --warmup, --batch-size
  --keep-best / --no-keep-best, --bn-renorm / --no-bn-renorm, --bn-frozen SHARE
  --aligned W, --mimic W  channel-aligned / MiR feature mimicking beside the logits (the kept channels from the
                          plan's history)
  --recovery bn|lstsq     BatchNorm re-estimation only, or the recovery engine (the default)

One row per call, appended to ``--out`` (jsonl): the test top-1 before and after, the held-out curve and the
point kept. ``--table`` prints the rows gathered so far.

  python bench/recovery_e1.py --old-defaults --epochs 1
  python bench/recovery_e1.py --regime-defaults --epochs 1
  python bench/recovery_e1.py --regime-defaults --epochs 0.2 --lr 0.02 --bn-frozen 1
  python bench/recovery_e1.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_real_teacher as bench  # noqa: E402
from _common import HINTON_KD, machine, machine_line  # noqa: E402
from _recovery_e0 import session  # noqa: E402

from distillprune.core.config import validate  # noqa: E402
from distillprune.distill.distiller import Distiller  # noqa: E402
from distillprune.errors import TrainingDiverged  # noqa: E402
from distillprune.prune.alignment import kept_channels  # noqa: E402
from distillprune.prune.estimate import recalibrate_bn  # noqa: E402
from distillprune.prune.recovery import RecoveryConfig, recover_  # noqa: E402
from distillprune.train import policy  # noqa: E402
from distillprune.train.config import TrainingOptions  # noqa: E402
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitSettings, fit  # noqa: E402

KNOBS = ("recovery", "lr", "schedule", "warmup", "batch_size", "keep_best", "bn_renorm", "bn_frozen", "aligned")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="runs/e0/results.json", help="an e0 row's results.json")
    ap.add_argument("--row", default="e0_2x")
    ap.add_argument("--e0-cache", default=None, help="the recovered weights (default: next to --plan)")
    ap.add_argument("--recovery", choices=["bn", "lstsq"], default="lstsq")
    ap.add_argument("--epochs", type=float, default=1.0)
    group = ap.add_mutually_exclusive_group(required=False)
    group.add_argument("--regime-defaults", action="store_true")
    group.add_argument("--old-defaults", action="store_true")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--schedule", default=None, help="onecycle | cosine | linear | constant")
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--bn-renorm", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--bn-frozen", type=float, default=None)
    ap.add_argument("--trainable", default=None, help="all | norms | near_cuts (train that first)")
    ap.add_argument("--trainable-share", type=float, default=None)
    ap.add_argument("--aligned", type=float, default=0.0)
    ap.add_argument("--mimic", type=float, default=0.0)
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--kd-temperature", type=float, default=HINTON_KD["temperature"])
    ap.add_argument("--kd-alpha", type=float, default=HINTON_KD["alpha"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--out", default="runs/finetune_e1.jsonl")
    ap.add_argument("--table", action="store_true", help="print the rows in --out and stop")
    a = ap.parse_args(argv)
    if a.old_defaults:
        a.lr, a.schedule, a.warmup = a.lr or 0.05, a.schedule or "onecycle", 0.15 if a.warmup is None else a.warmup
        a.keep_best = False if a.keep_best is None else a.keep_best
        a.bn_renorm = False if a.bn_renorm is None else a.bn_renorm
        a.bn_frozen = 0.0 if a.bn_frozen is None else a.bn_frozen
    return a


def options(o: argparse.Namespace) -> TrainingOptions:
    """The row's training options; what it leaves unset follows the fine-tune regime (``train.policy``)."""
    raw: dict = {"regime": "finetune", "keep_best": {}, "batchnorm": {}}
    if o.lr is not None:
        raw["optimizer"] = {"lr": o.lr}
    if o.schedule is not None or o.warmup is not None:
        base = policy.FINETUNE_SCHEDULE.model_dump()
        raw["schedule"] = {
            **base,
            **({"name": o.schedule} if o.schedule else {}),
            **({"warmup_fraction": o.warmup} if o.warmup is not None else {}),
        }
    if o.keep_best is not None:
        raw["keep_best"]["enabled"] = o.keep_best
    if o.bn_renorm is not None:
        raw["batchnorm"]["renormalize"] = o.bn_renorm
    if o.bn_frozen is not None:
        raw["batchnorm"]["frozen"] = o.bn_frozen
    if o.trainable is not None:
        raw["trainable"] = {"first": o.trainable, **({"share": o.trainable_share} if o.trainable_share else {})}
    return validate(TrainingOptions, raw, where="recovery_e1 options")


def start(o: argparse.Namespace, ctx: dict, plan_json: dict):  # type: ignore[no-untyped-def]
    """The cut of the plan with recovery (or BN re-estimation); the recovered weights cached on disk."""
    a = bench.parse(["--threads", str(o.threads)])
    a.fixed_plan, a.plan_recovery, a.depth_fractions = None, False, None
    s, _ = session(ctx["teacher"], ctx["data"], 2.0, ctx["lat"], a, plan_json)
    m = s.model.eval()
    cache = Path(o.e0_cache or Path(o.plan).parent / f"{o.row}_{o.recovery}.pt")
    if cache.exists():
        m.load_state_dict(torch.load(cache, weights_only=True))
    else:
        calib = [x for x, _ in s.calibration(8 * s.batch_size)]
        if o.recovery == "bn":
            recalibrate_bn(m, calib)
        else:
            recover_(m, ctx["teacher"], calib, RecoveryConfig(), seed=0)
        torch.save(m.state_dict(), cache)
    return s, m


def row(o: argparse.Namespace, ctx: dict, plan_json: dict) -> dict:
    s, m = start(o, ctx, plan_json)
    data, teacher = ctx["data"], ctx["teacher"]
    before = bench.top1(m, data, ctx)
    print(f"start: top-1 {before:.2f}%", flush=True)
    specs = [{**HINTON_KD, "temperature": o.kd_temperature, "alpha": o.kd_alpha, "weight": o.kd_weight}]
    specs += [{"name": "aligned", "weight": o.aligned}] if o.aligned else []
    specs += [{"name": "mimic", "weight": o.mimic}] if o.mimic else []
    objective = Distiller.from_specs(teacher, specs)
    objective.align(lambda: kept_channels(teacher, s.history, ctx["shape"]))
    settings = policy.settings(options(o), o.epochs, "finetune")
    torch.manual_seed(o.seed)
    try:
        hist = fit(
            m,
            data,
            settings,
            objective,
            context=Context(ctx["rt"], LoaderOptions(batch_size=o.batch_size, seed=o.seed, crop_padding=4, hflip=True)),
        )
    except TrainingDiverged as e:  # the row says so (frozen BatchNorm at a fine-tune's lr can diverge)
        return {"before": round(before, 2), "top1": None, "error": str(e), "settings": _settings(settings)}
    last = hist[-1]
    return {
        "before": round(before, 2),
        "top1": round(last["test_acc"], 2),
        "settings": _settings(settings),
        "checks": last.get("checks"),
        "kept": last.get("kept"),
        "note": last.get("note"),
        "train_s": round(sum(h["seconds"] for h in hist), 1),
    }


def _settings(settings: FitSettings) -> dict:
    return {
        "lr": settings.optimizer.lr,
        "schedule": settings.schedule.model_dump(),
        "keep_best": settings.keep_best is not None,
        "bn_renormalize": settings.bn_renormalize,
        "bn_frozen": settings.bn_frozen,
        "trainable": [settings.trainable_first, settings.trainable_share],
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    head = (
        "| E | lr | schedule | batch | keep best | BN renorm | BN frozen | aligned | mimic | seed "
        "| top-1 after the cut % | top-1 after E % | held-out top-1 at each check (start first) | point kept |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        st = r["settings"]
        sch = st["schedule"]
        kept = r.get("kept") or {}
        kept_s = f"epoch {kept['epoch']:g} ({kept.get('val_top1', '-')})" if kept else "-"
        checks = " ".join(f"{c['val_top1']:g}" for c in r.get("checks") or [] if c.get("val_top1") is not None) or "-"
        body += (
            f"| {r['epochs']:g} | {st['lr']:g} | {sch['name']} (warm-up {sch['warmup_fraction']:g}) | "
            f"{r['batch_size']} | {'yes' if st['keep_best'] else 'no'} | {'yes' if st['bn_renormalize'] else 'no'} | "
            f"{st['bn_frozen']:g} | {r['aligned']:g} | {r.get('mimic', 0):g} | {r.get('seed', 0)} | "
            f"{_pct(r['before'])} | {_pct(r['top1']) if r['top1'] is not None else 'diverged'} | {checks} | "
            f"{kept_s} |\n"
        )
    return head + body


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    out = Path(o.out)
    if o.table:
        print(table(out))
        return 0
    a = bench.parse(
        ["--threads", str(o.threads)]
        + (["--limit-train", str(o.limit_train)] if o.limit_train else [])
        + (["--limit-test", str(o.limit_test)] if o.limit_test else [])
    )
    ctx = bench.context(a)
    plan_json = json.loads(Path(o.plan).read_text())[o.row][-1]["plan"]
    t0 = time.perf_counter()
    got = row(o, ctx, plan_json)
    rec = {k: getattr(o, k) for k in (*KNOBS, "epochs", "mimic", "kd_weight", "kd_temperature", "kd_alpha", "seed")}
    rec.update(got, seconds=round(time.perf_counter() - t0, 1), plan=o.plan, machine=machine_line(machine()))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
