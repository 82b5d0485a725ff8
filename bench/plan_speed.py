"""How long the latency-targeted planner takes (issue 32): the prune stage's planning -- block scoring, pricing,
estimates, finalists timed; not the recovery of the chosen plan nor any training -- of the real ResNet-56, at
each target, first on a cold per-machine cache and then as the second plan of the machine (another target), and
whether each plan is in its band when the benchmark times it itself.

For each target T (``--targets``, 2x and 3x by default), in this order:
  cold  the cache folder emptied (``--cache``, a folder of this benchmark's; the user's cache is not touched),
        then a plan of T: every latency table entry is timed, the blocks are scored
  warm  then a plan of the next target (the last: the first) on that cache: the second plan of the machine
The planning time is ``PruneSession.prepare()``'s wall time (the plan; the recovery and training come after it).
Each plan is then cut (no recovery: latency depends on the shapes alone), exported, and timed back to back with
the teacher in ``--pairs`` pairs (ONNX Runtime CPU, 1 intra-op thread, batch 1; ``_common.side_by_side``): in
the band when the median is in ``[T, T * (1 + tolerance)]``.

  python bench/plan_speed.py                                  # ResNet-56, 2x and 3x (needs ../shared)
  python bench/plan_speed.py --targets 2 --pairs 15
  python bench/plan_speed.py --quick --out /tmp/ps            # a tiny random ResNet, synthetic data: no claims
Run it on a quiet machine (the load is printed next to every time): planning times a paired measurement, and a
loaded machine's timings are neither fast nor stable.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import load_teacher, machine, machine_line, save_results, side_by_side

from distillprune.core.reporting import to_jsonable
from distillprune.data import DataConfig, load_data
from distillprune.data.base import DataBundle, Split, channel_stats
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig
from distillprune.models import build_model
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneSession
from distillprune.train.config import RuntimeConfig
from distillprune.train.context import Context, LoaderOptions


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="../shared/models/cifar10-resnet56", help="checkpoint folder")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    ap.add_argument("--source", default="cifar10_jpeg")
    ap.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0], help="measured ORT speedups to plan")
    ap.add_argument("--pairs", type=int, default=9, help="the benchmark's own pairs per plan")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the planner's forward passes")
    ap.add_argument("--out", default="bench_out/plan_speed")
    ap.add_argument("--cache", default=None, help="the latency cache folder (default: OUT/cache; emptied first)")
    ap.add_argument("--quiet", action="store_true", help="no planner progress lines")
    ap.add_argument("--quick", action="store_true", help="a tiny random ResNet on synthetic data (tests): no claims")
    a = ap.parse_args(argv)
    if a.quick:
        a.targets, a.pairs = [1.5], min(a.pairs, 3)
    return a


def inputs(a: argparse.Namespace) -> tuple[torch.nn.Module, DataBundle, LatencyConfig]:
    """The teacher, the data and the planner's timing options."""
    if not a.quick:
        teacher, _ = load_teacher(a.teacher)
        data = load_data(DataConfig(source=a.source, path=a.data))
        return teacher, data, LatencyConfig(threads=1, batch_sizes=[1])
    torch.manual_seed(0)
    teacher = build_model("resnet", 10, (3, 32, 32), widths=[16, 32, 64], blocks=[2, 2, 2]).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    mean, std = channel_stats(x)
    data = DataBundle(Split(x[:448], y[:448]), Split(x[448:], y[448:]), 10, [str(i) for i in range(10)], mean, std)
    fast = LatencyConfig(threads=1, batch_sizes=[1], warmup=2, repeats=3, min_window_s=0.01, pairs=3)
    return teacher, data, fast


def plan_once(teacher: torch.nn.Module, data: DataBundle, target: float, lat: LatencyConfig, a, cache: Path) -> dict:
    """One plan (timed), its cut, and the benchmark's own timing of it against the teacher."""
    t = {"latency_speedup": target, "latency_cache": str(cache)}
    if a.quick:
        t.update(val_samples=64, calib_samples=64, depth_fractions=[0.0, 0.5])
    cfg = PruneConfig(target=t, width={"importance": "taylor", "round_to": 8})
    rt = RuntimeConfig(progress=not a.quiet, tensorboard=False, threads=a.threads)
    s = PruneSession(copy.deepcopy(teacher), cfg, data, context=Context(rt, LoaderOptions(128, 0), lat))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    plan = s.prepare()
    seconds = time.perf_counter() - t0
    s.structure.cut(0)  # the planned cut alone: latency depends on the shapes, not on the recovered weights
    shape = tuple(data.input_shape)
    cfg_time = None if not a.quick else lat
    lat_bench = side_by_side(
        onnx_bytes(s.model, shape), onnx_bytes(teacher, shape), shape, batch_sizes=[1], pairs=a.pairs, cfg=cfg_time
    )["bs1"]
    tol = cfg.target.tolerance if cfg.target is not None else 0.1
    return {
        "target": target,
        "plan_s": round(seconds, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "planner_speedup": plan.speedup,
        "bench_speedup": round(lat_bench["speedup"], 3),
        "bench_spread": [round(lat_bench["speedup_min"], 3), round(lat_bench["speedup_max"], 3)],
        "in_band": target <= lat_bench["speedup"] <= target * (1 + tol),
        "candidates": len(plan.candidates),
        "timed": plan.timed,
        "entries_timed": plan.lut_entries,
        "entries_cached": plan.lut_cached,
        "blocks": len(plan.blocks),
        "note": plan.note,
        "plan": to_jsonable(plan),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| target | cache | planning s (load) | candidates (timed) | table entries timed / cached | "
        "planner speedup | benchmark pairs speedup (min-max) | in band |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['target']:g}x | {r['cache']} | {r['plan_s']:.1f} ({r['load_before']:.1f}) | {r['candidates']} "
        f"({r['timed']}) | {r['entries_timed']} / {r['entries_cached']} | {r['planner_speedup']} | "
        f"{r['bench_speedup']:.2f}x ({r['bench_spread'][0]:.2f}-{r['bench_spread'][1]:.2f}) | "
        f"{'yes' if r['in_band'] else 'NO'} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache) if a.cache else out / "cache"
    teacher, data, lat = inputs(a)
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "quick": a.quick, "rows": rows}
    for i, target in enumerate(a.targets):
        shutil.rmtree(cache, ignore_errors=True)
        second = a.targets[(i + 1) % len(a.targets)]
        for label, t in (("cold", target), ("warm (second plan)", second)):
            print(f"--- plan {t:g}x, {label} cache", flush=True)
            rows.append({"cache": label, **plan_once(teacher, data, t, lat, a, cache)})
            save_results(out / "results.json", results)
    text = table(rows)
    lines = [
        "quick: a tiny random ResNet on synthetic data; no claims" if a.quick else "",
        text,
        f"machine: {machine_line(results['machine'])}",
        f"command: {results['command']}",
    ]
    (out / "table.md").write_text("\n".join(ln for ln in lines if ln) + "\n")
    print("\n".join(ln for ln in lines if ln))
    return 0


if __name__ == "__main__":
    sys.exit(main())
