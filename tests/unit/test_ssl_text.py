"""Masked-LM pre-training of a Hugging Face encoder on text without labels: the masking, one training run
through the pipeline (the head is not exported), and the probe on labelled text. Tiny BERTs built in code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.ssl.methods.mlm import mask_tokens

transformers = pytest.importorskip("transformers")
from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment  # noqa: E402

PAD, CLS, SEP, MASK = 0, 2, 3, 4


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[CLS, 10, 11, 12, SEP, PAD], [CLS, 13, 14, SEP, PAD, PAD]]).repeat(200, 1)
    return ids, (ids != PAD).long()


def test_masking_picks_real_tokens_only_and_splits_80_10_10():
    ids, attention = _batch()
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, attention, [PAD, CLS, SEP, MASK], MASK, 50, 1.0, g)
    real = ids >= 10
    assert torch.equal(labels != -100, real)  # every real token picked at p = 1, no special token, no padding
    assert torch.equal(labels[real], ids[real]) and torch.equal(masked[~real], ids[~real])
    n = int(real.sum())
    share_mask = float((masked[real] == MASK).sum()) / n
    kept = float((masked[real] == ids[real]).sum()) / n  # the 10 % left alone (and random draws of the same id)
    assert 0.76 < share_mask < 0.84 and 0.07 < kept < 0.14
    masked, labels = mask_tokens(ids[:1], attention[:1], [PAD, CLS, SEP, MASK], MASK, 50, 1e-9, g)
    assert int((labels != -100).sum()) == 1  # a batch always has a token to predict


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mlm")
    return {"model": tiny_bert_folder(root / "bert", layers=2), "data": tiny_sentiment(root / "data", 96, 48)}


@pytest.mark.slow
def test_mlm_pretrains_an_encoder_without_labels_and_ships_the_encoder_alone(text, tmp_path):
    raw = {
        "name": "tiny_bert_mlm",
        "model": {"source": "hf", "path": str(text["model"]), "task": "embedding"},
        "data": {
            "source": "text",
            "path": str(text["data"]),
            "batch_size": 16,
            "labels": False,
            "text": {"max_length": 16},
        },
        "runtime": {"progress": False, "tensorboard": False},
        "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1, "min_window_s": 0.005},
        "probe": {"k": 5},
        "stages": [
            {"type": "train", "epochs": 3, "optimizer": {"name": "adamw", "lr": 1e-3}, "ssl": {"method": "mlm"}},
            {"type": "export"},
        ],
    }
    from distillprune.core.config import validate
    from distillprune.recipes.schema import Recipe

    report = dp.compress(validate(Recipe, raw), tmp_path / "run", quiet=True)
    train = report.stages[0]
    assert train.accuracy is None and 0 <= train.metrics["knn_top1"] <= 100 and "linear_top1" in train.metrics
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]  # the encoder learnt to fill the blanks
    model, _, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "01_train")
    assert not any("cls." in k or "lm_head" in k for k in model.state_dict())  # no MLM head in the model
    base = transformers.AutoModel.from_pretrained(str(text["model"]))
    assert count(model) == count(base) - sum(p.numel() for n, p in base.named_parameters() if n.startswith("pooler"))


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
