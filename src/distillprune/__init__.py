"""distillprune: knowledge distillation combined with pruning, measured, exported to ONNX.

Importing the package has no side effects (no env vars, no logging changes, no CUDA init).
"""
from distillprune.api import distill, prune_
from distillprune.cluster import ClusterConfig, cluster_
from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.data import DataBundle, DataConfig, load_data
from distillprune.errors import (
                                 CheckpointError,
                                 CompressionError,
                                 DataError,
                                 DistillpruneError,
                                 QuantizationError,
                                 RecipeError,
                                 TrainingDiverged,
)
from distillprune.export import export_onnx, parity
from distillprune.lowrank import LowRankConfig, lowrank_
from distillprune.measure import measure_model
from distillprune.models import build_model
from distillprune.pipeline import compress
from distillprune.quant import QuantConfig, QuantResult, quantize
from distillprune.recipes import Recipe, load_recipe
from distillprune.report import CompressionReport

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "CheckpointError", "CompressionReport", "DataBundle", "DataConfig", "DataError",
    "DistillpruneError", "Recipe", "RecipeError", "TrainingDiverged", "build_model", "compress", "distill",
    "export_onnx", "load_checkpoint", "load_data", "load_recipe", "measure_model", "parity", "prune_",
    "save_checkpoint", "__version__",
    # quantization, low rank, clustering
    "ClusterConfig", "CompressionError", "LowRankConfig", "QuantConfig", "QuantResult", "QuantizationError",
    "cluster_", "lowrank_", "quantize",
]
