"""Run under torchrun by test_torchrun_encoder.py: prune a tiny random BERT with a latency target on two
ranks; each rank writes its architecture to OUT/rank<r>.json.

Rank 1's ONNX Runtime is rigged to time every model alike (no candidate is faster than the dense one), so
a rank that ran its own timed search would find no plan, or another one: the ranks end alike only when the
plan and every cut are decided on rank 0 and replayed on the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from distillprune.data import DataConfig, load_data
from distillprune.measure import latency
from distillprune.prune import prune_
from distillprune.train import RuntimeConfig
from distillprune.train import distributed as ddp
from distillprune.train.context import Context, LoaderOptions
from distillprune.transformers import load_encoder, surgery
from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment

RT = RuntimeConfig(device="cpu", threads=1, progress=False, tensorboard=False)
CFG = {
    "target": {"latency_speedup": 1.05, "depth_fractions": [0.34, 0.67]},
    "ffn": {"round_to": 8},
    "steps": 2,
    "epochs_per_step": 1,
}


def main(out: Path) -> None:
    ddp.setup(torch.device("cpu"))
    torch.set_num_threads(1)
    rank = ddp.rank()
    if rank == 0:
        tiny_bert_folder(out / "bert", layers=3, num_labels=2)
        tiny_sentiment(out / "data", 48, 16)
    ddp.barrier()
    if rank == 1:
        latency.windows = lambda *a, **k: [1.0]  # the one timing loop: every model "times" the same here
    data = load_data(
        DataConfig(
            source="text",
            path=str(out / "data"),
            batch_size=16,
            text={"tokenizer": str(out / "bert"), "max_length": 16},
        )
    )
    model = load_encoder(str(out / "bert"), "sequence-classification", 2)
    report = prune_(model, CFG, data, context=Context(RT, LoaderOptions(16)))
    res = {
        "rank": rank,
        "world": ddp.world_size(),
        "summary": surgery.summary(model),
        "plan": report.plan.to_dict(),
        "history": [op.to_dict() for op in report.history],
        "dropped_layers": report.dropped_layers,
        "fingerprint": ddp.architecture_fingerprint(model, report.history),
        "epochs": report.training.epochs,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    ddp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
