"""E = 1 ablation of recovery on the real ResNet-56 at one fixed plan (issue 19): what one epoch of KD makes of
each start.

The plan is read from an e0 row's results (``--plan``: ``bench/cifar10_real_teacher.py --rows e0_2x`` wrote
it), so every row starts from the very same cut and differs only in what the row names:

  --recovery bn|lstsq   BatchNorm re-estimated on the 1,024 calibration images, or the recovery engine
                        (``prune.recovery.recover_`` with its defaults)
  --lr, --schedule, --warmup   the epoch's optimizer (SGD, batch 128, crop + flip, Hinton KD T=4 alpha=0.9)
  --steps N             the cut spread over N prune steps of 1/N epoch each (``PruneSession``, lr_span stage)
  --aligned W           channel-aligned feature KD at weight W beside the logits (``PruneSession``)

One row per call, appended to ``--out`` (jsonl); ``--table`` prints the rows gathered so far.

  python bench/recovery_e1.py --recovery bn --lr 0.05
  python bench/recovery_e1.py --recovery lstsq --lr 0.01 --aligned 1
  python bench/recovery_e1.py --table
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_real_teacher as bench  # noqa: E402
from _common import HINTON_KD, FitSettings, fit  # noqa: E402
from _recovery_e0 import session  # noqa: E402

from distillprune.core.reporting import from_jsonable  # noqa: E402
from distillprune.distill.distiller import Distiller  # noqa: E402
from distillprune.prune.config import PruneConfig  # noqa: E402
from distillprune.prune.estimate import recalibrate_bn  # noqa: E402
from distillprune.prune.planner import Plan  # noqa: E402
from distillprune.prune.recovery import RecoveryConfig, recover_  # noqa: E402
from distillprune.prune.session import PruneSession  # noqa: E402
from distillprune.train.config import OptimizerConfig, ScheduleConfig  # noqa: E402
from distillprune.train.context import Context, LoaderOptions, fit_trainer  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="runs/e0_planner_2x/results.json", help="an e0 row's results.json")
    ap.add_argument("--row", default="e0_2x")
    ap.add_argument("--recovery", choices=["bn", "lstsq"], default="lstsq")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--schedule", default="onecycle")
    ap.add_argument("--warmup", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--aligned", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--out", default="runs/recovery_e1.jsonl")
    ap.add_argument("--table", action="store_true", help="print the rows in --out and stop")
    return ap.parse_args(argv)


def verb_row(o: argparse.Namespace, ctx: dict, plan_json: dict) -> dict:
    """The cut, then ``recover_`` (or BN only), then one ``fit`` of KD: the library's verbs in a row."""
    a = bench.parse(["--threads", str(o.threads)])
    a.fixed_plan, a.plan_recovery = None, False
    s, _ = session(ctx["teacher"], ctx["data"], 2.0, ctx["lat"], a, plan_json)
    calib = [x for x, _ in s.calibration(8 * s.batch_size)]
    m = s.model.eval()
    if o.recovery == "bn":
        recalibrate_bn(m, calib)
    else:
        recover_(m, ctx["teacher"], calib, RecoveryConfig(), seed=0)
    before = bench.top1(m, ctx["data"], ctx)
    settings = FitSettings(1, OptimizerConfig(lr=o.lr), ScheduleConfig(name=o.schedule, warmup_fraction=o.warmup))
    hist = fit(
        m,
        ctx["data"],
        settings,
        Distiller.from_specs(ctx["teacher"], [HINTON_KD]),
        runtime=ctx["rt"],
        seed=0,
        batch_size=128,
        crop_padding=4,
        hflip=True,
    )
    return {"before": before, "top1": hist[-1]["test_acc"]}


def session_row(o: argparse.Namespace, ctx: dict, plan_json: dict) -> dict:
    """The same epoch inside a prune session (steps, aligned KD), the plan given instead of searched."""
    plan = from_jsonable(Plan, plan_json)
    losses = [HINTON_KD] + ([{"name": "aligned", "weight": o.aligned}] if o.aligned else [])
    cfg = PruneConfig(
        target={"latency_speedup": 2.0},
        width={"importance": "taylor", "round_to": 8},
        recovery={"method": "none" if o.recovery == "bn" else "lstsq"},
        steps=o.steps,
        epochs_per_step=1.0 / o.steps,
        lr_span="stage",
        optimizer={"lr": o.lr},
        schedule={"name": o.schedule, "warmup_fraction": o.warmup},
        distill={"losses": losses},
    )
    data = ctx["data"]
    trainer = fit_trainer(cfg, data, Context(ctx["rt"], LoaderOptions(128, 0, crop_padding=4, hflip=True)))
    context = Context(loader=LoaderOptions(128, 0), latency=ctx["lat"])
    s = PruneSession(copy.deepcopy(ctx["teacher"]), cfg, data, trainer=trainer, context=context)
    s.structure.plan = lambda: plan  # type: ignore[method-assign]
    s.run()
    return {"before": None, "top1": bench.top1(s.model, data, ctx)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    head = "| start | lr | schedule | steps | aligned | top-1 after the cut % | top-1 after E = 1 % |\n"
    head += "|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['recovery']} | {r['lr']:g} | {r['schedule']} (warm-up {r['warmup']:g}) | {r['steps']} | "
        f"{r['aligned']:g} | {_pct(r['before'])} | {r['top1']:.2f} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    out = Path(o.out)
    if o.table:
        print(table(out))
        return 0
    torch.manual_seed(0)
    a = bench.parse(
        ["--threads", str(o.threads)]
        + (["--limit-train", str(o.limit_train)] if o.limit_train else [])
        + (["--limit-test", str(o.limit_test)] if o.limit_test else [])
    )
    ctx = bench.context(a)
    plan_json = json.loads(Path(o.plan).read_text())[o.row][-1]["plan"]
    t0 = time.perf_counter()
    got = (session_row if o.steps > 1 or o.aligned else verb_row)(o, ctx, plan_json)
    rec = {k: getattr(o, k) for k in ("recovery", "lr", "schedule", "warmup", "steps", "aligned")}
    rec.update(got, seconds=round(time.perf_counter() - t0, 1), plan=o.plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
