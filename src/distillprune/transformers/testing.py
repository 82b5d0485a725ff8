"""Tiny randomly initialised Hugging Face models built in code, for tests and examples (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distillprune.data.examples import WORDS, tiny_tokenizer


def tiny_bert_folder(
    folder: Path,
    *,
    layers: int = 2,
    heads: int = 4,
    hidden: int = 32,
    ffn: int = 64,
    num_labels: int | None = None,
    seed: int = 0,
) -> Path:
    """A BERT with a WordPiece tokenizer over ``data.examples.WORDS`` saved to ``folder``; with
    ``num_labels`` a BertForSequenceClassification, else a BertModel (an embedder's backbone)."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tiny_tokenizer(folder)
    torch.manual_seed(seed)
    labels: dict[str, Any] = {"num_labels": num_labels} if num_labels else {}
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=128,
        **labels,
    )
    model = BertForSequenceClassification(cfg) if num_labels else BertModel(cfg)
    model.save_pretrained(str(folder))
    return folder


def tiny_sentiment(folder: Path, n_train: int = 160, n_test: int = 64) -> Path:
    """train.csv / test.csv of :func:`distillprune.data.examples.sentiment_texts` in ``folder``."""
    import csv

    from distillprune.data.examples import sentiment_texts

    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(sentiment_texts(n, seed))
    return folder


def main() -> None:
    """``python -m distillprune.transformers.testing OUT``: OUT/model (tiny BERT classifier) and OUT/data."""
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-bert")
    tiny_bert_folder(out / "model", layers=3, num_labels=2)
    tiny_sentiment(out / "data")
    print(f"wrote {out / 'model'} and {out / 'data'}")


if __name__ == "__main__":
    main()
