"""Transformers: Hugging Face encoders (BERT, DistilBERT, RoBERTa, MiniLM, XLM-R...) from local folders,
pruned by attention heads, FFN neurons and whole layers while distilling, exported with named inputs.

Importing this package registers the ``hf`` model source, its checkpoint builder, the history ops and the
``prune_`` dispatch for ``TransformerPruneConfig``; it does not import ``transformers`` (the optional extra
``distillprune[hf]``) until a model or tokenizer is loaded.
"""

from distillprune.prune.api import PRUNERS
from distillprune.transformers.config import FfnConfig, HeadsConfig, LayersConfig, TransformerPruneConfig
from distillprune.transformers.model import TextEncoder, load_encoder, save_pretrained
from distillprune.transformers.session import TransformerPruneReport, TransformerPruneSession, prune_transformer_
from distillprune.transformers.surgery import DropLayersOp, HeadsOp, NeuronsOp

PRUNERS[TransformerPruneConfig] = prune_transformer_

__all__ = [
    "DropLayersOp",
    "FfnConfig",
    "HeadsConfig",
    "HeadsOp",
    "LayersConfig",
    "NeuronsOp",
    "TextEncoder",
    "TransformerPruneConfig",
    "TransformerPruneReport",
    "TransformerPruneSession",
    "load_encoder",
    "prune_transformer_",
    "save_pretrained",
]
