"""Tiny randomly initialised Hugging Face models built in code, for tests and examples (no download)."""
from __future__ import annotations

from pathlib import Path

import torch

from distillprune.data.examples import WORDS, tiny_tokenizer


def tiny_bert_folder(folder: Path, *, layers: int = 2, heads: int = 4, hidden: int = 32, ffn: int = 64,
                     num_labels: int | None = None, seed: int = 0) -> Path:
    """A BERT with a WordPiece tokenizer over ``data.examples.WORDS`` saved to ``folder``; with
    ``num_labels`` a BertForSequenceClassification, else a BertModel (an embedder's backbone)."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tiny_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=128,
                     **({"num_labels": num_labels} if num_labels else {}))
    model = BertForSequenceClassification(cfg) if num_labels else BertModel(cfg)
    model.save_pretrained(str(folder))
    return folder
