"""Transformers: Hugging Face encoders (BERT, DistilBERT, RoBERTa, MiniLM, XLM-R...) from local folders,
pruned by attention heads, FFN neurons and whole layers while distilling, exported with named inputs.

Importing this package registers the ``hf`` model source, its checkpoint builder, the history ops and the
encoder's pruning structure for ``TransformerPruneConfig`` (what ``distillprune.prune_`` and the session cut);
it does not import ``transformers`` (the optional extra ``distillprune[hf]``) until a model or tokenizer is
loaded.
"""

from distillprune.transformers.config import FfnConfig, HeadsConfig, LayersConfig, TransformerPruneConfig
from distillprune.transformers.model import TextEncoder, load_encoder, save_pretrained
from distillprune.transformers.structure import EncoderStructure, TransformerPruneReport
from distillprune.transformers.surgery import DropLayersOp, HeadsOp, NeuronsOp

__all__ = [
    "DropLayersOp",
    "EncoderStructure",
    "FfnConfig",
    "HeadsConfig",
    "HeadsOp",
    "LayersConfig",
    "NeuronsOp",
    "TextEncoder",
    "TransformerPruneConfig",
    "TransformerPruneReport",
    "load_encoder",
    "save_pretrained",
]
