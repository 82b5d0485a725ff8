"""Quantization, low rank and clustering on top of pruning: the tables of docs/benchmarks.md
("Quantization, low rank, clustering (reduced, CPU)").

Two setups, each run through the pipeline (``distillprune.pipeline.execute``):
  digits   the ``digits_demo`` recipe (teacher -> prune+distil -> KD fine-tune): its student
  cifar10  ResNet-20 teacher on a CIFAR-10 subset -> width-pruned (0.5, channels rounded to 8) with KD
and on each pruned student:
  1. quantization: static int8 (QDQ, MinMax / Percentile / Entropy calibration), dynamic int8, QAT
     with KD, fp16 -- every file timed on ONNX Runtime CPU (bs 1 / 32, fixed threads, interleaved
     rounds, median) against the pruned fp32 ONNX, accuracy of each file on the test split;
  2. clustering: 50% unstructured pruning (KD) then k-means k=16 per layer with KD centroid
     fine-tuning; packed size (4-bit indices + codebooks, lzma) against the dense fp32 tensors;
  3. low rank: SVD of the dense teacher (rank by ratio 0.5, rounded to 8) with KD fine-tuning.

  python bench/quant_cluster.py                 # reduced CPU run (CIFAR subset 5000/1000)
  python bench/quant_cluster.py --smoke         # tiny subsets, 1 epoch (tests)
  # the full run (GPU machine: training on the GPU, ORT latency on its CPU): all of CIFAR-10, the
  # ResNet-56 teacher that bench/cifar10_resnet56.py trained and kept, no retraining
  python bench/quant_cluster.py --setups cifar10 --model resnet56 --teacher bench_out/cifar10/teacher \
      --limit-train 0 --limit-test 0
Every number printed is measured by this script; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from distillprune.measure.bench import bench_onnx
from distillprune.measure.latency import LatencyConfig
from distillprune.pipeline import execute
from distillprune.recipes import BUILTIN
from distillprune.recipes.schema import read_yaml

KD = {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]}
TARGET_SPEEDUP, TARGET_INT8_LOSS, TARGET_RATIO, TARGET_CLUSTER_LOSS = 1.8, 0.3, 8.0, 0.5


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.npz"))
    ap.add_argument("--out", default="bench_out/quant_cluster")
    ap.add_argument("--smoke", action="store_true", help="tiny subsets, 1 epoch (tests)")
    ap.add_argument("--setups", default="digits,cifar10")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (median)")
    ap.add_argument("--limit-train", type=int, default=5000, help="CIFAR-10 training images (class-balanced); 0 = all")
    ap.add_argument("--limit-test", type=int, default=1000, help="CIFAR-10 test images (class-balanced); 0 = all")
    ap.add_argument("--model", default="resnet20", help="CIFAR-10 teacher architecture (model zoo name)")
    ap.add_argument(
        "--teacher",
        default=None,
        help="checkpoint folder of a trained CIFAR-10 teacher (e.g. the one bench/cifar10_resnet56.py "
        "keeps): start from it instead of training one",
    )
    a = ap.parse_args()
    a.limit_train, a.limit_test = a.limit_train or None, a.limit_test or None
    if a.teacher and not (Path(a.teacher) / "model.json").exists():
        ap.error(f"--teacher {a.teacher}: no distillprune checkpoint there (model.json missing)")
    if a.smoke:
        a.limit_train, a.limit_test, a.rounds = 100, 50, 1
    return a


def cpu_info() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx_vnni|avx2)\b", text)))
    return model, flags


def common(a: argparse.Namespace) -> dict:
    m = {"batch_sizes": [1, 32], "threads": a.threads}
    if a.smoke:
        m.update(batch_sizes=[1], repeats=1, warmup=1, min_window_s=0.005)
    return {"runtime": {"progress": False, "tensorboard": False, "device": "auto"}, "measure": m}


def quant_stages(a: argparse.Namespace, qat_epochs: int, qat_lr: float) -> list[dict]:
    cal = 64 if a.smoke else 512
    st = [{"type": "export"}]  # model.onnx: the pruned fp32 reference, before QAT changes the weights
    for c in ("minmax", "percentile", "entropy"):
        st.append(
            {
                "type": "quantize",
                "method": "static",
                "calibration": {"method": c, "samples": cal},
                "filename": f"model.int8-{c}.onnx",
                "min_agreement": 0.0,
            }
        )
    st += [
        {"type": "quantize", "method": "dynamic", "min_agreement": 0.0},
        {"type": "quantize", "method": "fp16", "min_agreement": 0.0},
        {
            "type": "quantize",
            "method": "qat",
            "min_agreement": 0.0,
            "calibration": {"samples": cal},
            "qat": {"epochs": 1 if a.smoke else qat_epochs, "optimizer": {"lr": qat_lr}, "distill": KD},
        },
    ]
    return st


def digits_recipe(a: argparse.Namespace) -> dict:
    raw = read_yaml(BUILTIN / "digits_demo.yaml")
    raw.update(common(a))
    raw["runtime"]["threads"] = 2
    raw["stages"] = [s for s in raw["stages"] if s["type"] != "export"] + quant_stages(a, 2, 0.005)
    if a.smoke:
        raw["data"].update(limit_train=128, limit_test=64)
        raw["model"]["kwargs"] = {"widths": [8, 16, 16]}  # 2 blocks a stage, as the demo: depth pruning applies
        for st in raw["stages"]:
            for key in ("epochs", "epochs_per_step"):
                if st.get(key):
                    st[key] = 1
    return raw


def cifar_subset(a: argparse.Namespace):
    """A seeded, class-balanced subset of the CIFAR-10 pack (the library's ``limit_*``). Random
    CIFAR-shaped data for --smoke when the pack is absent."""
    import torch

    from distillprune.data import DataConfig, load_data
    from distillprune.data.base import DataBundle, Split, channel_stats

    p = Path(a.data)
    if p.exists():
        return load_data(
            DataConfig(source="cifar10_jpeg", path=str(p), limit_train=a.limit_train, limit_test=a.limit_test)
        )
    if not a.smoke:
        sys.exit(f"CIFAR-10 pack not found: {p} (pass --data)")
    g = np.random.default_rng(0)
    sizes = (a.limit_train or 100, a.limit_test or 50)
    xs = [torch.from_numpy(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)) for n in sizes]
    ys = [torch.from_numpy(g.integers(0, 10, n)) for n in sizes]
    mean, std = channel_stats(xs[0])
    return DataBundle(
        Split(xs[0], ys[0]), Split(xs[1], ys[1]), 10, [str(i) for i in range(10)], mean, std, "cifar10-subset"
    )


def cifar_recipe(a: argparse.Namespace) -> dict:
    e = (lambda n: 1) if a.smoke else (lambda n: n)
    if a.teacher:  # a trained teacher: evaluate it where the train stage would be
        model, first = {"name": a.model, "checkpoint": a.teacher}, {"type": "evaluate"}
    else:
        model = (
            {"name": "resnet", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}} if a.smoke else {"name": a.model}
        )
        first = {"type": "train", "epochs": e(15), "optimizer": {"lr": 0.1}}
    return {
        "name": f"cifar10_{a.model}",
        "seed": 0,
        "model": model,
        "data": {
            "source": "cifar10_jpeg",
            "path": a.data,
            "batch_size": 128,
            "augment": {"crop_padding": 4, "hflip": True},
        },
        **common(a),
        "stages": [
            first,
            {
                "type": "prune",
                "width": {"ratio": 0.5, "importance": "l2", "round_to": 8},
                "steps": 2,
                "epochs_per_step": e(2),
                "optimizer": {"lr": 0.05},
                "distill": KD,
            },
            {"type": "finetune", "epochs": e(6), "optimizer": {"lr": 0.05}, "distill": KD},
            *quant_stages(a, 2, 0.005),
        ],
    }


def follow_up(base: dict, run: Path, checkpoint: str, stages: list[dict], name: str) -> dict:
    """A recipe that starts from a checkpoint of ``run`` and distils from ``run``'s dense teacher."""
    kd = {**KD, "teacher": str(run / "teacher")}
    for st in stages:
        if "distill" in st:
            st["distill"] = kd
    return {
        **{k: v for k, v in base.items() if k not in ("stages", "model", "name")},
        "name": name,
        "model": {"name": base["model"]["name"], "checkpoint": checkpoint},
        "stages": stages,
    }


def cluster_stages(a: argparse.Namespace, lr: float) -> list[dict]:
    e = 1 if a.smoke else 2
    return [
        {"type": "evaluate"},
        {
            "type": "prune",
            "unstructured": {"sparsity": 0.5, "schedule": "cubic"},
            "steps": 2,
            "epochs_per_step": e,
            "optimizer": {"lr": lr},
            "distill": KD,
        },
        {"type": "cluster", "k": 16, "epochs": e, "optimizer": {"lr": lr / 20}, "distill": KD},
    ]


def lowrank_stages(a: argparse.Namespace, lr: float) -> list[dict]:
    return [
        {"type": "evaluate"},
        {
            "type": "lowrank",
            "rank_by": "ratio",
            "ratio": 0.5,
            "epochs": 1 if a.smoke else 3,
            "optimizer": {"lr": lr},
            "distill": KD,
        },
    ]


def stage_dir(run: Path, report, kind: str) -> str:
    s = [s for s in report.stages if s.type == kind][-1]
    return str(run / "stages" / f"{s.index:02d}_{kind}")


def interleaved(files: list[Path], data, a: argparse.Namespace) -> dict[str, dict]:
    """Latency of every file, measured in alternating rounds (median), so drift hits all alike."""
    cfg = LatencyConfig(
        threads=a.threads,
        batch_sizes=[1] if a.smoke else [1, 32],
        repeats=1 if a.smoke else 5,
        warmup=1 if a.smoke else 10,
        min_window_s=0.005 if a.smoke else 0.1,
    )
    rows = {f.name: None for f in files}
    lat: dict[str, dict[str, list[float]]] = {f.name: {} for f in files}
    for r in range(a.rounds):
        for row in bench_onnx(files, data if r == 0 else None, cfg):
            if r == 0:
                rows[row.file] = row
            for k, v in row.latency_ms.items():
                lat[row.file].setdefault(k, []).append(v)
    return {
        n: {
            "kind": rows[n].kind,
            "bytes": rows[n].bytes,
            "accuracy": rows[n].accuracy,
            "latency_ms": {k: statistics.median(v) for k, v in lat[n].items()},
        }
        for n in rows
    }


def quant_table(setup: str, run: Path, report, data, a: argparse.Namespace) -> tuple[list[str], dict]:
    q = {s.details.path: s for s in report.stages if s.type == "quantize"}
    files = [run / "model.onnx"] + [run / f for f in q if not f.endswith("bf16.onnx")]
    m = interleaved(files, data, a)
    ref = m["model.onnx"]
    keys = sorted(ref["latency_ms"], key=lambda k: int(k[2:]))
    head = (
        ["variant", "file", "top-1 %", "Δ pp", "agreement"]
        + [f"ORT {k} ms" for k in keys]
        + [f"speedup {k}" for k in keys]
        + ["size KiB"]
    )
    lines = [
        f"**{setup}**: pruned student, {_fmt_int(report.final.params)} params, {_fmt_int(report.final.macs)} MACs",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    out = {}
    for name, r in m.items():
        st = q.get(name)
        variant = "pruned fp32" if st is None else _variant(st.details.method, st.details.details)
        delta = None if r["accuracy"] is None or ref["accuracy"] is None else r["accuracy"] - ref["accuracy"]
        sp = {k: ref["latency_ms"][k] / r["latency_ms"][k] for k in keys if k in r["latency_ms"]}
        cells = [
            variant,
            name,
            _f(r["accuracy"]),
            "-" if delta is None else f"{delta:+.2f}",
            "-" if st is None else f"{100 * st.details.agreement:.1f}%",
        ]
        cells += [f"{r['latency_ms'][k]:.3f}" if k in r["latency_ms"] else "-" for k in keys]
        cells += [f"{sp[k]:.2f}x" if k in sp else "-" for k in keys] + [f"{r['bytes'] / 1024:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
        out[variant] = {**r, "delta_pp": delta, "speedup": sp}
    return lines, out


def _variant(method: str, d: dict) -> str:
    return {
        "static": f"static int8 ({d.get('calibration')})",
        "dynamic": "dynamic int8",
        "qat": "QAT int8 (KD)",
        "fp16": "fp16",
        "bf16": "bf16",
    }[method]


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def cluster_row(setup: str, report) -> tuple[str, dict]:
    base = next(s for s in report.stages if s.type == "evaluate")
    pr = next(s for s in report.stages if s.type == "prune")
    cl = next(s for s in report.stages if s.type == "cluster")
    d = cl.details.sizes
    loss = base.accuracy - cl.accuracy
    cells = [
        setup,
        _f(base.accuracy),
        f"{_f(pr.accuracy)} ({100 * pr.details.sparsity:.0f}% zeros)",
        _f(cl.accuracy),
        f"{-loss:+.2f}",
        f"{d['dense_fp32_bytes'] / 1024:.1f}",
        f"{d['packed_bytes'] / 1024:.1f}",
        f"{d['packed_zlib_bytes'] / 1024:.1f}",
        f"{d['packed_lzma_bytes'] / 1024:.1f}",
        f"{d['clustered_fp32_lzma_bytes'] / 1024:.1f}",
        f"{d['ratio_lzma']:.2f}x",
    ]
    return "| " + " | ".join(cells) + " |", {"loss_pp": loss, "ratio": d["ratio_lzma"], **d}


def lowrank_row(setup: str, report) -> tuple[str, dict]:
    base = next(s for s in report.stages if s.type == "evaluate")
    lr = next(s for s in report.stages if s.type == "lowrank")
    sp = {k: base.latency_ms[k] / lr.latency_ms[k] for k in base.latency_ms if k in lr.latency_ms}
    cells = [
        setup,
        _f(base.accuracy),
        _f(lr.accuracy),
        f"{lr.accuracy - base.accuracy:+.2f}",
        f"{_fmt_int(base.macs)} -> {_fmt_int(lr.macs)}",
        f"{_fmt_int(base.params)} -> {_fmt_int(lr.params)}",
        " / ".join(f"{sp[k]:.2f}x" for k in sorted(sp, key=lambda k: int(k.split("bs")[1]))),
        f"{len(lr.details.factorized)} / {len(lr.details.skipped)}",
    ]
    return "| " + " | ".join(cells) + " |", {"speedup": sp, "macs": [base.macs, lr.macs]}


def run_setup(setup: str, a: argparse.Namespace, out: Path) -> dict:
    raw = digits_recipe(a) if setup == "digits" else cifar_recipe(a)
    lr = 0.05
    t0 = time.perf_counter()
    run = out / setup / "quant"
    state = execute(_validate(raw), run, quiet=True, data=None if setup == "digits" else cifar_subset(a))
    res = {"quant_report": state.report, "data": state.data, "run": run}
    ck = stage_dir(run, state.report, "finetune")
    cl = follow_up(raw, run, ck, cluster_stages(a, lr), f"{setup}_cluster")
    res["cluster_report"] = execute(_validate(cl), out / setup / "cluster", quiet=True, data=state.data).report
    lo = follow_up(raw, run, str(run / "teacher"), lowrank_stages(a, lr), f"{setup}_lowrank")
    res["lowrank_report"] = execute(_validate(lo), out / setup / "lowrank", quiet=True, data=state.data).report
    res["seconds"] = time.perf_counter() - t0
    return res


def _validate(raw: dict):
    from distillprune.core.config import validate
    from distillprune.recipes.schema import Recipe

    return validate(Recipe, raw, where=raw.get("name", "bench"))


def main() -> int:
    a = parse()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        import shutil

        shutil.rmtree(out)
    cpu, flags = cpu_info()
    import onnxruntime
    import torch

    where = "GPU" if torch.cuda.is_available() else "CPU"
    mode = (
        "smoke (tiny subsets, 1 epoch: numbers meaningless)"
        if a.smoke
        else f"{'full' if a.limit_train is None else 'reduced'} (training on {where}, ORT on CPU)"
    )
    print(f"# quant_cluster.py: {mode}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {cpu}, {__import__('os').cpu_count()} cores, flags: {', '.join(flags) or 'none'}; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; ORT CPU, {a.threads} intra-op "
        f"thread(s), latency = median of {a.rounds} interleaved rounds"
    )
    results, summary = {}, {}
    for setup in a.setups.split(","):
        results[setup] = run_setup(setup, a, out)
        print(f"({setup}: {results[setup]['seconds']:.0f} s)")
    print("\n### Quantization on top of pruning (ONNX Runtime CPU)\n")
    for setup, r in results.items():
        lines, summary[setup] = quant_table(setup, r["run"], r["quant_report"], r["data"], a)
        print("\n".join(lines) + "\n")
    print("### Clustering k=16 after 50% unstructured pruning (sizes in KiB)\n")
    head = [
        "setup",
        "fp32 top-1",
        "50% pruned top-1",
        "clustered top-1",
        "Δ pp vs fp32",
        "dense fp32",
        "packed",
        "packed+zlib",
        "packed+lzma",
        "clustered fp32+lzma",
        "ratio (fp32 / packed+lzma)",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for setup, r in results.items():
        line, summary[f"{setup}_cluster"] = cluster_row(setup, r["cluster_report"])
        print(line)
    print("\n### Low rank (SVD, rank = 0.5 x full rounded to 8, KD fine-tuning) on the dense teacher\n")
    head = [
        "setup",
        "dense top-1",
        "low-rank top-1",
        "Δ pp",
        "MACs",
        "params",
        "ORT speedup (bs1 / bs32)",
        "factorized / skipped layers",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for setup, r in results.items():
        line, summary[f"{setup}_lowrank"] = lowrank_row(setup, r["lowrank_report"])
        print(line)
    print("\n### Targets\n")
    for setup in results:
        best = max(
            (v for k, v in summary[setup].items() if k.startswith("static")),
            key=lambda v: v["speedup"].get("bs1", 0),
        )
        ok = min(best["speedup"].values()) >= TARGET_SPEEDUP and (best["delta_pp"] or 0) >= -TARGET_INT8_LOSS
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in best["speedup"].items())
        print(
            f"- {setup}: static int8 over pruned fp32: {sp}, {best['delta_pp']:+.2f} pp "
            f"(target >= {TARGET_SPEEDUP}x at <= {TARGET_INT8_LOSS} pp): {'met' if ok else 'NOT met'}"
        )
        c = summary[f"{setup}_cluster"]
        ok = c["ratio"] >= TARGET_RATIO and c["loss_pp"] <= TARGET_CLUSTER_LOSS
        print(
            f"- {setup}: clustering {c['ratio']:.2f}x smaller at {-c['loss_pp']:+.2f} pp "
            f"(target >= {TARGET_RATIO:.0f}x at <= {TARGET_CLUSTER_LOSS} pp): {'met' if ok else 'NOT met'}"
        )
    if not any("vnni" in f for f in flags):
        print(
            f"- this CPU has no VNNI (flags seen: {', '.join(flags) or 'none'}): ONNX Runtime's int8 kernels "
            "run on AVX2 (u8s8 multiply-add in 16 bits), without the int8 dot-product instructions that make "
            "them faster than its fp32 kernels"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
