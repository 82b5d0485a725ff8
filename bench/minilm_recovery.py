"""MiniLM right after the cut and after one epoch: cosine to the teacher with and without the least-squares re-fit
of the projections (issue 19, item 6), and the fine-tune regime at a 2x measured target (issue 31, "Encoders").
Same data as ``bench/minilm.py`` (fortune sentences, label-free), same teacher (all-MiniLM-L6-v2).

Rows (``--rows``):
  fixed_off, fixed_on   the dp row of ``bench/minilm.py`` (drop 2 of 6 layers, 1/3 of the heads, 1/2 of the FFN
                        neurons, rounded to 64) with ``epochs_per_step: 0``, re-fit off / on (issue 19's table)
  t2x_norecov           ``target: {latency_speedup: 2.0}`` (the planner searches layers x heads/FFN, measured
                        against the dense model), re-fit off, ``epochs_per_step: 1`` with the fine-tune regime's
                        defaults (no optimizer / schedule / keep-best key: ``train.policy`` decides)
  t2x                   the same with the re-fit on: the engine of issue 31 (recovery, then the regime)
  t2x_before31          the re-fit on, then the training ``bench/minilm.py`` gave its students before issue 31,
                        spelt out: AdamW 2e-4, one-cycle (15% warm-up), no held-out checks

Every row goes through ``distillprune.prune_`` with the library's own trainer (``fit_trainer``, what ``prune_``
builds when none is passed), wrapped so that the model it is handed -- the cut and its re-fit, before the first
step -- is scored first: that is E = 0; the model ``prune_`` returns is E = 1. Cosine and top-10 overlap are
measured on the held-out sentences against the teacher's embeddings; each pruned model is timed back to back
with the teacher (``bench/_common.side_by_side``: ONNX Runtime CPU, 1 thread, pairs alternating, the 1-minute
load beside each) at (batch 1, seq 64) -- the target's shape -- and (32, 128); each row is saved (OUT/<row>/hf)
so ``--retime`` can time them again at a quieter moment. Rows merge into OUT/results.json
as they finish; the table renders from it.

  python bench/minilm_recovery.py --out runs/minilm-recovery --limit-train 1500 --limit-test 500 --threads 2
  python bench/minilm_recovery.py --out runs/minilm-recovery --rows t2x --limit-train 1500 --limit-test 500
  python bench/minilm_recovery.py --out runs/minilm-recovery --retime        # re-time the saved rows
  python bench/minilm_recovery.py --out runs/minilm-recovery --table
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import load_results, machine, machine_line, save_results, side_by_side
from minilm import MODEL, data_config

import distillprune as dp
from distillprune.export.onnx import onnx_bytes, run_torch
from distillprune.measure.latency import LatencyConfig
from distillprune.measure.quality import embedding_quality
from distillprune.train.config import RuntimeConfig
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainers import fit_trainer
from distillprune.transformers import load_encoder, surgery
from distillprune.transformers.config import TransformerPruneConfig

FIXED = {"heads": {"ratio": 1 / 3}, "ffn": {"ratio": 0.5}, "layers": {"drop": 2}}
BEFORE31 = {
    "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
    "schedule": {"name": "onecycle"},
    "keep_best": {"enabled": False},
}
#: row -> (cut, re-fit on, epochs_per_step, training keys)
ROWS: dict[str, tuple[str, bool, int, dict]] = {
    "fixed_off": ("fixed", False, 0, {}),
    "fixed_on": ("fixed", True, 0, {}),
    "t2x_norecov": ("target", False, 1, {}),
    "t2x": ("target", True, 1, {}),
    "t2x_before31": ("target", True, 1, BEFORE31),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/minilm-recovery"))
    ap.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    ap.add_argument("--limit-train", type=int, default=1500)
    ap.add_argument("--limit-test", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=256, help="calibration sentences (scores and re-fit)")
    ap.add_argument("--speedup", type=float, default=2.0, help="target.latency_speedup, at (1, 64)")
    ap.add_argument("--depth-fractions", default="0,0.34", help="target.depth_fractions (0.34: 2 of 6 layers)")
    ap.add_argument("--pairs", type=int, default=5, help="side-by-side pairs per shape")
    ap.add_argument("--retime", action="store_true", help="re-time every saved row back to back and stop")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/results.json and stop")
    a = ap.parse_args(argv)
    unknown = [r for r in a.rows.split(",") if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    return a


def prune_config(a: argparse.Namespace, row: str) -> TransformerPruneConfig:
    cut, refit, epochs, training = ROWS[row]
    fractions = [float(f) for f in a.depth_fractions.split(",")]
    shape = FIXED if cut == "fixed" else {"target": {"latency_speedup": a.speedup, "depth_fractions": fractions}}
    return TransformerPruneConfig.model_validate(
        {
            **shape,
            "calib_samples": a.calib_samples,
            "recovery": {"method": "lstsq", "calib_samples": a.calib_samples} if refit else None,
            "epochs_per_step": epochs,
            **training,
        }
    )


def timed(model: torch.nn.Module, teacher_onnx: bytes, pairs: int) -> dict[str, Any]:
    """``model`` timed back to back with the teacher at (1, 64) and (32, 128)."""
    blob, out = onnx_bytes(model, (64,)), {}
    for bs, seq in ((1, 64), (32, 128)):
        cfg = LatencyConfig(seq_lengths=[seq], warmup=2, repeats=3, min_window_s=0.2 if bs == 1 else 1.0)
        out[f"b{bs}_s{seq}"] = side_by_side(blob, teacher_onnx, (seq,), batch_sizes=(bs,), pairs=pairs, cfg=cfg)[
            f"bs{bs}"
        ]
    return out


def run_row(a: argparse.Namespace, row: str, teacher, data, t_emb, teacher_onnx: bytes) -> dict[str, Any]:
    cfg = prune_config(a, row)
    test_x = data.inputs("test")
    ctx = Context(runtime=RuntimeConfig(progress=False, tensorboard=False), loader=LoaderOptions(batch_size=32))
    library = fit_trainer(cfg, data, ctx, desc="prune")  # what prune_ builds when it is given no trainer
    starts: list[dict[str, float]] = []
    records: list[dict] = []

    def trainer(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        starts.append(embedding_quality(run_torch(model, test_x), t_emb))  # E = 0: the cut (and re-fit) as handed
        recs = library(model, *args, **kwargs)
        records.extend(recs)
        return recs

    m = copy.deepcopy(teacher)
    for p in m.parameters():  # a copy of the teacher, which the library freezes in place when it distils
        p.requires_grad_(True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rep = dp.prune_(m, cfg, data, teacher=teacher, trainer=trainer, context=ctx)
    seconds = time.perf_counter() - t0
    after = embedding_quality(run_torch(m.eval(), test_x), t_emb)
    m.save_pretrained(a.out / row / "hf", tokenizer=MODEL)  # for --retime
    plan = rep.plan.to_dict() if getattr(rep, "plan", None) is not None else None
    last = records[-1] if records else {}
    return {
        "structure": surgery.summary(m),
        "dropped_layers": rep.dropped_layers,
        "plan": None if plan is None else {k: v for k, v in plan.items() if k != "candidates"},
        "e0": starts[0] if starts else after,
        "e1": after if cfg.epochs_per_step else None,
        "curve": {k: last[k] for k in ("checks", "kept", "note") if k in last},
        "training": {"regime_keys": ROWS[row][3], "lr_last": last.get("lr")},
        "latency": timed(m, teacher_onnx, a.pairs),
        "seconds": round(seconds, 1),
    }


def retime(a: argparse.Namespace, results: dict) -> None:
    """Every saved row timed again back to back with the teacher (a quieter moment)."""
    teacher_onnx = onnx_bytes(load_encoder(MODEL, "embedding").eval(), (64,))
    for row, r in results.items():
        folder = a.out / row / "hf"
        if row.startswith("_") or not folder.is_dir():
            continue
        r["latency"] = timed(load_encoder(str(folder), "embedding").eval(), teacher_onnx, a.pairs)
        r["retimed"] = True
        save_results(a.out / "results.json", results)
        print(row, r["latency"]["b1_s64"], flush=True)


def fmt_q(q: dict | None) -> str:
    return "-" if not q else f"{q['cosine']:.4f} / {100 * q['top10_overlap']:.1f}%"


def table(results: dict) -> str:
    head = (
        "| row | layers / heads / FFN | re-fit | training (E = 1) | E = 0 cosine / top-10 | E = 1 cosine / top-10 | "
        "speedup (1, 64) (min-max) | speedup (32, 128) | load1 at timing | held-out checks (embedding loss; "
        "**kept**) |"
    )
    lines = [head, "|" + "---|" * 10]
    for row, r in results.items():
        if row.startswith("_"):
            continue
        st = r["structure"]
        shape = f"{st['layers']} / {sum(st['heads'])} / {sum(st['ffn'])}"
        cut, refit, epochs, training = ROWS[row]
        how = "-" if not epochs else ("regime defaults" if not training else "AdamW 2e-4, one-cycle, no checks")
        s1, s32 = r["latency"]["b1_s64"], r["latency"]["b32_s128"]
        checks, kept = r["curve"].get("checks", []), r["curve"].get("kept")
        curve = " ".join(
            f"**{p['val_loss']:.4f}**" if p == kept else f"{p['val_loss']:.4f}" for p in checks if "val_loss" in p
        )
        lines.append(
            f"| {row} | {shape} | {'on' if refit else 'off'} | {how} | {fmt_q(r['e0'])} | {fmt_q(r['e1'])} | "
            f"{s1['speedup']:.2f}x ({s1['speedup_min']:.2f}-{s1['speedup_max']:.2f}) | {s32['speedup']:.2f}x | "
            f"{s1['load1']:.1f} | {curve or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    path = a.out / "results.json"
    results = load_results(path)
    if a.table:
        print(table(results))
        return 0
    torch.set_num_threads(a.threads)
    if a.retime:
        retime(a, results)
        print(table(results))
        return 0
    data = dp.load_data(data_config(a.limit_train, a.limit_test))
    teacher = load_encoder(MODEL, "embedding").eval()
    t_emb = run_torch(teacher, data.inputs("test"))
    teacher_onnx = onnx_bytes(teacher, (64,))
    m = machine()
    results["_setup"] = {
        "machine": m,
        "machine_line": machine_line(m),
        "train_sentences": len(data.train),
        "test_sentences": len(data.test),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    for row in a.rows.split(","):
        load0 = os.getloadavg()[0]
        results[row] = run_row(a, row, teacher, data, t_emb, teacher_onnx)
        results[row]["load1_during"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        save_results(path, results)
        print(row, {k: results[row][k] for k in ("structure", "e0", "e1", "seconds")}, flush=True)
    print(machine_line(m))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
