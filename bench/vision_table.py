"""The vision table (issue 21, item 5): torchvision MobileNetV2 and ResNet-18 and timm EfficientNet-B0 on
the CIFAR-10 pack, each the user's own model trained briefly here, then cut to a 2x *measured* target by
distillprune and to the same MACs by Torch-Pruning, both with one epoch of KD from the dense model.

Per model (``model: {name: torchvision | timm, kwargs: {arch: ...}}``, standard ImageNet stems on 32x32
inputs, no pretrained weights: nothing is downloaded):
  dense     trained here for ``--dense-epochs`` (CE, label smoothing 0.1, one-cycle SGD, crop + flip; no
            teacher), saved as a distillprune checkpoint in OUT/MODEL/dense and reused by later runs
  dp_2x     the library's recipe from that checkpoint: a prune stage with ``target: {latency_speedup: 2.0}``,
            Taylor width + round_to 8, Hinton KD from the dense model, then E = 1 epoch of KD fine-tuning,
            ONNX export (``cifar10_real_teacher.dp_row``)
  tp_l2_r8  Torch-Pruning's own API: L2 group magnitude, one uniform ratio, round_to 8, the ratio bisected to
            at least the dp row's MAC reduction, the same E = 1 epoch of Hinton KD (``peer_row``)
Latency: each row's ONNX and the dense model's ONNX timed back to back in ``--pairs`` pairs on ONNX Runtime
CPU, 1 intra-op thread (``_common.side_by_side``); the dense row is timed against itself (the noise floor).

Rows are appended to OUT/rows.jsonl as they finish (a killed run keeps them; a rerun skips rows already
there, a row without a result included: delete its line to run it again); ``--table`` prints the Markdown
table from that file alone.

  python bench/vision_table.py --out runs/vision                 # all models (vision venv)
  python bench/vision_table.py --out runs/vision --table         # the table
  python bench/vision_table.py --quick --source npz --data tiny.npz --out /tmp/q   # no claims (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import Timer, fmt_spread, machine, machine_line, onnx_of, render_table, size_of, train_or_load_teacher
from cifar10_real_teacher import dp_row, peer_row, runtime, teacher_row

from distillprune.data import DataConfig, load_data
from distillprune.errors import DistillpruneError

#: row key -> (model source, architecture)
MODELS = {
    "mobilenet_v2": ("torchvision", "mobilenet_v2"),
    "resnet18": ("torchvision", "resnet18"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
}
ROWS = ("dense", "dp_2x", "tp_l2_r8")
LABELS = {"dense": "dense (trained here)", "dp_2x": "distillprune, target 2x", "tp_l2_r8": "Torch-Pruning L2, r8"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.npz")
    ap.add_argument("--source", default="cifar10_jpeg", help="data source: cifar10_jpeg | npz | cifar10_bin")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    ap.add_argument("--out", default="runs/vision")
    ap.add_argument("--dense-epochs", type=int, default=3, help="training of the dense model")
    ap.add_argument("--dense-lr", type=float, default=0.1, help="peak one-cycle lr of the dense training")
    ap.add_argument("--epochs", type=int, default=1, help="KD budget E of the dp and Torch-Pruning rows")
    ap.add_argument("--lr", type=float, default=0.05, help="peak one-cycle lr of the rows' KD")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--limit-train", type=int, default=4000, help="training images (class-balanced subset)")
    ap.add_argument("--limit-test", type=int, default=2000, help="test images (class-balanced subset)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    ap.add_argument("--pairs", type=int, default=5, help="side-by-side latency pairs per batch size")
    ap.add_argument("--refits", type=int, default=None, help="dp rows: target.refits (default: the library's)")
    ap.add_argument(
        "--depth-fractions",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75],
        help="dp rows: target.depth_fractions (the library's default tries 7 depths up to 0.75; 4 keep the "
        "search cheap)",
    )
    ap.add_argument("--table", action="store_true", help="print the table from OUT/rows.jsonl and exit")
    ap.add_argument("--quick", action="store_true", help="a few hundred images, tiny budget: no claims (tests)")
    a = ap.parse_args(argv)
    if a.quick:
        a.limit_train, a.limit_test, a.batch_size = 128, 64, 32
        a.dense_epochs, a.epochs, a.pairs = 1, 1, 1
        a.refits = 0 if a.refits is None else a.refits
        a.depth_fractions = [0.5]  # one candidate: the planner's search is most of a quick run
    # what cifar10_real_teacher's rows read from their arguments: the library's defaults, no GPU
    a.gpu, a.check_norm = False, False
    a.dp_recovery = a.dp_lr = a.dp_schedule = a.aligned = a.steps = None
    return a


def versions() -> dict:
    import timm
    import torchvision

    return {**machine(), "torchvision": torchvision.__version__, "timm": timm.__version__}


def device_line(m: dict) -> str:
    return f"{machine_line(m)}, torchvision {m['torchvision']}, timm {m['timm']}"


# ------------------------------------------------------------------------------------------- rows
def read_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def append_row(path: Path, rec: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def context(key: str, data, a) -> tuple[dict, argparse.Namespace, float]:
    """Train (or reuse) the dense model; the arguments and context ``cifar10_real_teacher``'s rows expect."""
    source, arch = MODELS[key]
    folder = Path(a.out) / key / "dense"
    with Timer() as tm:
        dense, spec = train_or_load_teacher(
            folder,
            source,
            {"arch": arch},
            data,
            epochs=a.dense_epochs,
            runtime=runtime(a),
            batch_size=a.batch_size,
            lr=a.dense_lr,
        )
    shape = tuple(data.input_shape)
    ctx = {"data": data, "teacher": dense, "spec": spec, "shape": shape, "rt": runtime(a)}
    ctx["teacher_onnx"] = onnx_of(dense, shape)
    ctx["teacher_macs"] = size_of(dense, shape)["macs"]
    ns = argparse.Namespace(**vars(a), teacher=str(folder), runs_dir=str(Path(a.out) / key / "runs"))
    return ctx, ns, tm.seconds


def model_rows(key: str, data, done: dict, a, log) -> None:
    t0 = time.perf_counter()
    ctx, ns, dense_s = context(key, data, a)
    out = Path(a.out) / "rows.jsonl"
    base = {"model": key, "source": MODELS[key][0], "arch": MODELS[key][1]}
    dp_macs = None
    for row in ROWS:
        prior = done.get((key, row))
        if prior is not None:
            dp_macs = prior.get("macs") if row == "dp_2x" else dp_macs
            continue
        with Timer() as tm:
            if row == "dense":
                rec = {**teacher_row(ctx, ns), "train_s_dense": dense_s, "dense_epochs": a.dense_epochs}
            elif row == "dp_2x":
                try:
                    rec = dp_row("dp_2x", ctx, ns, seed=0)
                except DistillpruneError as e:  # e.g. a target no plan reaches: the table says so
                    rec = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", "target": 2.0}
                dp_macs = rec.get("macs")
            else:
                if dp_macs is None:
                    continue  # no dp row to match
                ns.mac_target = ctx["teacher_macs"] / dp_macs
                rec = peer_row("tp_l2_r8", ctx, ns)
        rec = {**base, "row": row, **rec, "row_s": tm.seconds}
        append_row(out, rec)
        log(f"{key} {row} done in {tm.seconds:.0f} s" + (f": top-1 {rec['top1']:.2f}%" if "top1" in rec else ""))
    log(f"{key}: {time.perf_counter() - t0:.0f} s for its rows (dense training {dense_s:.0f} s)")


# ------------------------------------------------------------------------------------------- table
def _speed(r: dict, d: dict) -> str:
    return fmt_spread(r.get("latency", {}).get("bs1"), "speedup", ".2f", "x")


COLUMNS = [
    ("model", None),
    ("row", lambda r, d: LABELS[r["row"]]),
    ("top-1 before FT %", lambda r, d: f"{r['top1_before']:.2f}" if r.get("top1_before") is not None else "-"),
    ("top-1 %", lambda r, d: f"{r['top1']:.2f}"),
    ("Δ vs dense pp", lambda r, d: "-" if r is d else f"{r['top1'] - d['top1']:+.2f}"),
    ("params", lambda r, d: f"{r['params'] / 1e6:.3f}M"),
    ("MACs", lambda r, d: f"{r['macs'] / 1e6:.2f}M"),
    ("MAC ratio", lambda r, d: f"{d['macs'] / r['macs']:.2f}x"),
    ("ORT bs1 ms", lambda r, d: fmt_spread(r.get("latency", {}).get("bs1"), "ms", ".3f")),
    ("speedup bs1", _speed),
    ("speedup bs32", lambda r, d: fmt_spread(r.get("latency", {}).get("bs32"), "speedup", ".2f", "x")),
    ("train s", lambda r, d: f"{r.get('train_s', r.get('train_s_dense', 0)):.0f}"),
    ("row s", lambda r, d: f"{r['row_s']:.0f}"),
]


def table(rows: list[dict]) -> str:
    lines, notes = [], []
    for key in dict.fromkeys(r["model"] for r in rows):
        mine = {r["row"]: r for r in rows if r["model"] == key}  # the last record of a row wins
        if "dense" not in mine:
            continue
        dense = mine["dense"]
        ok = [(f"{dense['source']} {key}", mine[k]) for k in ROWS if k in mine and "error" not in mine[k]]
        notes += [f"{key} {k}: {mine[k]['error']}" for k in ROWS if k in mine and "error" in mine[k]]
        text = render_table(ok, COLUMNS, dense).splitlines()
        lines += text if not lines else text[2:]
    out = "\n".join(lines)
    return out + ("\n\nRows without a result: " + "; ".join(notes) if notes else "")


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    out = Path(a.out)
    path = out / "rows.jsonl"
    if a.table:
        rows = read_rows(path)
        setup = next((r for r in reversed(rows) if r.get("row") == "setup"), None)
        print(table([r for r in rows if r.get("row") != "setup"]))
        print(f"\nDevice: {device_line(setup['machine'])}." if setup else "")
        return 0
    unknown = sorted(set(a.models.split(",")) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(MODELS)}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    if a.quick:
        print("quick: no claims (a few hundred images, a tiny budget; this only checks that the script runs)")
    m = versions()
    print(f"Device: {device_line(m)}", flush=True)
    data = load_data(DataConfig(source=a.source, path=a.data, limit_train=a.limit_train, limit_test=a.limit_test))
    setup = {k: getattr(a, k) for k in ("dense_epochs", "dense_lr", "epochs", "lr", "batch_size", "pairs", "quick")}
    setup.update(train_images=len(data.train), test_images=len(data.test), command=" ".join(sys.argv))
    append_row(path, {"row": "setup", "machine": m, **setup})
    done = {(r["model"], r["row"]): r for r in read_rows(path) if r.get("row") != "setup"}  # errors too
    for key in a.models.split(","):
        model_rows(key, data, done, a, log)
    print(table([r for r in read_rows(path) if r.get("row") != "setup"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
