"""E = 0 rows of the real-teacher benchmark (issue 19): the planned cut of the trained ResNet-56, then recovery
only -- at most ``--calib`` training images, no gradient step -- and top-1 on the whole test split.

One plan per target (the library's planner, ``PruneSession.prepare``; cached in the results so the ablation
can be re-run without re-planning), one cut, then each ablation variant on a copy of the cut:

  cut          the cut alone (dense BatchNorm statistics)
  bn           BatchNorm re-estimated on the calibration images (the library before recovery)
  bias+bn      data-free bias compensation, then BatchNorm re-estimation
  bias         data-free bias compensation alone (what runs without data)
  lstsq        least-squares re-fit of every layer downstream of the cut (no residual-stream target, no ReLU gate)
  lstsq+stream the same with the residual-stream target on each surviving block's last conv (identity and
               projection shortcuts)
  lstsq+stream+relu  ... and ReLU-aware targets (``recovery.relu``): the library's default
  lstsq+stream+bn   lstsq+stream+relu, then BatchNorm re-estimated as well
  consumers+stream  only the layers that read a cut tensor (+ stream, + relu)
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager, nullcontext

import torch

from distillprune.core.reporting import from_jsonable, to_jsonable
from distillprune.distill.distiller import snapshot
from distillprune.prune.config import PruneConfig
from distillprune.prune.estimate import recalibrate_bn
from distillprune.prune.planner import Plan
from distillprune.prune.recovery import RecoveryConfig, recover_
from distillprune.prune.session import PruneSession
from distillprune.train.context import Context, LoaderOptions

VARIANTS: dict[str, tuple[dict | None, bool]] = {  # name: (recovery options or None, BN re-estimated after)
    "cut": (None, False),
    "bn": (None, True),
    "bias+bn": ({"method": "bias"}, True),
    "bias": ({"method": "bias"}, False),
    "lstsq": ({"stream": False, "relu": False}, False),
    "lstsq+stream": ({"relu": False}, False),
    "lstsq+stream+relu": ({}, False),
    "lstsq+stream+bn": ({}, True),
    "consumers+stream": ({"scope": "consumers"}, False),
}


def session(teacher, data, target: float, lat, a, plan: dict | None) -> tuple[PruneSession, float]:
    """A session over a copy of the teacher, planned (or given the cached ``plan``) and cut (step 0's cut only:
    the ablation does its own recovery and BatchNorm)."""
    cfg = PruneConfig(
        target={
            "latency_speedup": target,
            **({"depth_fractions": a.depth_fractions} if a.depth_fractions else {}),
            **({"block_choice": a.block_choice} if getattr(a, "block_choice", None) else {}),
            "plan_recovery": bool(a.plan_recovery),  # candidates compared after least squares (else BN only)
        },
        width={"importance": "taylor", "round_to": 8},
        recovery={"method": "lstsq", "calib_samples": a.calib},
    )
    s = PruneSession(copy.deepcopy(teacher), cfg, data, context=Context(loader=LoaderOptions(128, 0), latency=lat))
    t0 = time.perf_counter()
    if plan is None and a.fixed_plan:
        s.model.eval()
        s.teacher = snapshot(teacher)
        s.plan = fixed_plan(s, target, a.fixed_plan)
    elif plan is None:
        s.prepare()
    else:
        s.model.eval()
        s.teacher = snapshot(teacher)
        s.plan = from_jsonable(Plan, plan)
    seconds = time.perf_counter() - t0
    s.structure.use_plan(s.plan)
    s.structure.cut(0)  # the planned cut of step 0, without the step's BatchNorm / recovery (settle)
    return s, seconds


def fixed_plan(s: PruneSession, target: float, spec: str) -> Plan:
    """A plan without the planner's search (for a loaded machine): ``"BLOCKS:PREFIX,PREFIX"`` removes BLOCKS
    residual blocks (a count: the library's lazy-greedy KD-loss choice, ``prune.depth.BlockScorer``; a count
    with ``r``, e.g. ``9r``: by recoverability per MAC saved, ``prune.recoverability``; or "+"-separated block
    paths) and halves every
    channel group whose root layer starts with one of the prefixes (``conv1`` is the stem)."""
    from distillprune.prune.channels import enumerate_groups
    from distillprune.prune.depth import BlockScorer, removable_blocks, remove_blocks

    count, _, prefixes = spec.partition(":")
    batches = [x for x, _ in s.calibration(2 * s.batch_size)]
    assert s.teacher is not None and s.cfg.width is not None
    if count.isdigit():
        with torch.no_grad():
            logits = [s.teacher(x) for x in batches]
        blocks = BlockScorer(s.model, removable_blocks(s.model), batches, logits).greedy(int(count))
    elif count.endswith("r") and count[:-1].isdigit():  # by recoverability per MAC saved
        blocks = recoverable(s, [x for x, _ in s.calibration(8 * s.batch_size)], int(count[:-1]))
    else:  # the blocks named ("+"-separated paths)
        blocks = count.split("+")
    probe = copy.deepcopy(s.model)
    remove_blocks(probe, blocks)
    by_size = s.cfg.width.model_copy(update={"importance": "l2"})  # only the groups' roots and sizes are read
    groups = enumerate_groups(probe, batches[0][:1], by_size, s.num_classes).groups
    roots = tuple(p for p in prefixes.split(",") if p)
    widths = {g.root: [max(g.min_keep, g.size // 2), g.size] for g in groups if g.root.startswith(roots)}
    return Plan({"latency_speedup": target}, blocks=blocks, widths=widths, note=f"fixed plan {spec}")


def recoverable(s: PruneSession, batches: list, count: int) -> list[str]:
    """The first ``count`` blocks by recoverability per MAC saved (``prune.recoverability``)."""
    from distillprune.prune.depth import removable_blocks
    from distillprune.prune.latency_table import layer_of, layer_shapes
    from distillprune.prune.recoverability import block_errors, by_recoverability

    blocks = removable_blocks(s.model)
    errors = block_errors(s.model, blocks, batches)
    shapes = layer_shapes(s.model, s.input_shape)
    saved = {b: float(sum(v.macs() for n, v in shapes.items() if layer_of(n).startswith(f"{b}."))) for b in blocks}
    order = by_recoverability(errors, saved)
    print("  blocks by recoverability per MAC:", ", ".join(f"{b} {errors[b]:.3f}" for b in order), flush=True)
    return order[:count]


@contextmanager
def ranked(ctx: dict, top1, sink: list[dict]):
    """While the planner runs: every candidate it estimates (recovered, BatchNorm as the session leaves it) is
    also scored on the test split, so the benchmark can say whether the planner's estimate -- on held-out
    *training* images, which the teacher has fitted -- ranks candidates as the test split does."""
    from distillprune.prune import planner

    original = planner._Planner.estimate

    def estimate(self, cand, model):  # type: ignore[no-untyped-def]
        original(self, cand, model)
        test = top1(copy.deepcopy(model).eval(), ctx["data"], ctx)
        sink.append({"label": cand.label, "est_top1": cand.est_top1, "est_kd": cand.est_kd, "test_top1": test})
        print(f"  rank: {cand.label}: est {cand.est_top1} test {test:.2f}", flush=True)

    planner._Planner.estimate = estimate  # type: ignore[method-assign]
    try:
        yield
    finally:
        planner._Planner.estimate = original  # type: ignore[method-assign]


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below three points."""
    if len(xs) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return round(cov / var, 3) if var else None


def e0_row(target: float, ctx: dict, a, cached: dict | None, top1) -> dict:
    t, data = ctx["teacher"], ctx["data"]
    rank: list[dict] = []
    with ranked(ctx, top1, rank) if getattr(a, "rank", False) and not cached else nullcontext():
        s, plan_s = session(t, data, target, ctx["lat"], a, (cached or {}).get("plan"))
    calib = [x for x, _ in s.calibration(a.calib)]
    rec: dict = {
        "rank": rank or (cached or {}).get("rank"),
        "rank_spearman": spearman([r["est_top1"] for r in rank], [r["test_top1"] for r in rank])
        if rank
        else (cached or {}).get("rank_spearman"),
        "target": target,
        "fixed_plan": a.fixed_plan,
        "plan": to_jsonable(s.plan),
        "plan_s": round(plan_s, 1) if cached is None else (cached or {}).get("plan_s"),
        "speedup_planner": s.plan.speedup if s.plan else None,
        "latency": ctx["time"](copy.deepcopy(s.model)) if a.fixed_plan and not (cached or {}).get("latency") else None,
        "calib_images": sum(len(x) for x in calib),
        "variants": {},
    }
    wanted = a.e0_variants.split(",") if a.e0_variants else list(VARIANTS)
    for name in wanted:
        opts, bn = VARIANTS[name]
        m = copy.deepcopy(s.model).eval()
        t0 = time.perf_counter()
        report = None
        if opts is not None:
            cfg = RecoveryConfig(calib_samples=a.calib, damp=a.damp, positions_per_image=a.positions, **opts)
            report = recover_(m, t, calib, cfg, seed=0)
        if bn:
            recalibrate_bn(m, calib)
        secs = time.perf_counter() - t0
        acc = top1(m.eval(), data, ctx)
        rec["variants"][name] = {
            "top1": round(acc, 2),
            "seconds": round(secs, 1),
            "summary": report.summary() if report else None,
            "skipped": report.skipped if report else {},
        }
        print(f"  e0 {target:g}x {name}: top-1 {acc:.2f}% ({secs:.0f} s)", flush=True)
        yield rec


def e0_table(results: dict) -> str:
    rows = [k for k in results if k.startswith("e0_")]
    if not rows:
        return ""
    names = list(VARIANTS)
    head = "| target | measured bs-1 (planner) | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    body = ""
    for k in rows:
        r = results[k][-1]
        v = r.get("variants", {})
        cells = [f"{v[n]['top1']:.2f}" if n in v else "-" for n in names]
        body += f"| {r['target']:g}x | {r.get('speedup_planner')} | " + " | ".join(cells) + " |\n"
    return head + body
