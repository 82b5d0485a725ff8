"""The library, whole: every family imported, so every built-in method is registered.

``import distillprune`` alone imports none of this (the command answers ``--help``, ``list`` and ``report``
without torch); the first public name read from the package (``distillprune.compress`` ...) imports this
module, and so does the first lookup in a registry whose methods register from all over the library.
"""

# ruff: noqa: F401, I001  (the package's public names, re-exported by distillprune/__init__)
from distillprune import transformers as _transformers  # (first: registers the hf source, ops, structure)
from distillprune.cluster import ClusterConfig, ClusterReport, cluster_
from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.trust import code_trust
from distillprune.data import DataBundle, DataConfig, Examples, load_data
from distillprune.distill import DistillConfig, DistillOptions, DistillReport, distill
from distillprune.export import export_onnx, parity
from distillprune.lowrank import LowRankConfig, LowRankReport, lowrank_
from distillprune.measure import measure_model
from distillprune.models import build_model, make_model
from distillprune.pipeline import compress
from distillprune.prune import PruneConfig, PruneReport, PruneSession, prune_
from distillprune.quant import (
    BF16Config,
    DynamicConfig,
    FP16Config,
    QATConfig,
    QuantConfig,
    QuantResult,
    StaticConfig,
    quantize,
)
from distillprune.recipes.schema import Recipe, load_recipe
from distillprune.report import CompressionReport
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainers import fit_trainer
