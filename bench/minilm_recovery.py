"""MiniLM right after the cut (no training step): cosine to the teacher with and without the least-squares
re-fit of the projections (issue 19, item 6). The dp row of ``bench/minilm.py`` (drop 2 of 6 layers, 1/3 of
the heads, 1/2 of the FFN neurons, rounded to 64) with ``epochs_per_step: 0``; same data (fortunes).

  python bench/minilm_recovery.py --limit-train 1500 --limit-test 500 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from minilm import MODEL, data_config

import distillprune as dp
from distillprune.export.onnx import run_torch
from distillprune.measure.quality import embedding_quality
from distillprune.train.context import Context, LoaderOptions
from distillprune.transformers import load_encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit-train", type=int, default=1500)
    ap.add_argument("--limit-test", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=256, help="calibration sentences (scores and re-fit)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = dp.load_data(data_config(a.limit_train, a.limit_test))
    teacher = load_encoder(MODEL, "embedding").eval()
    test_x = data.inputs("test")
    t_emb = run_torch(teacher, test_x)
    print("| recovery | cosine to teacher | top-10 overlap | seconds |\n|---|---|---|---|")
    for enabled in (False, True):
        m, t0 = copy.deepcopy(teacher), time.perf_counter()
        cfg = {
            "heads": {"ratio": 1 / 3},
            "ffn": {"ratio": 0.5},
            "layers": {"drop": 2},
            "calib_samples": a.calib_samples,
            "recovery": {"method": "lstsq", "calib_samples": a.calib_samples} if enabled else None,
        }
        dp.prune_(m, cfg, data, teacher=teacher, context=Context(loader=LoaderOptions(batch_size=32)))
        q = embedding_quality(run_torch(m.eval(), test_x), t_emb)
        dt = time.perf_counter() - t0
        print(f"| {'on' if enabled else 'off'} | {q['cosine']:.4f} | {q['top10_overlap']:.3f} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    main()
