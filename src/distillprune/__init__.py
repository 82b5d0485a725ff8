"""distillprune: knowledge distillation combined with pruning, measured, exported to ONNX.

Importing the package has no side effects beyond registering its own methods (no env vars, no logging
changes, no CUDA init); only the ``distillprune`` command's own process is set up (``distillprune._process``).
"""

from distillprune import _process  # noqa: F401, I001  (first: sets up the command's process, nothing else's)
from distillprune import transformers as _transformers  # noqa: F401, I001  (registers the hf source, ops, prune_)
from distillprune._version import __version__
from distillprune.cluster import ClusterConfig, ClusterReport, cluster_
from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.trust import code_trust
from distillprune.data import DataBundle, DataConfig, Examples, load_data
from distillprune.distill import DistillConfig, DistillOptions, DistillReport, distill
from distillprune.errors import (
    CheckpointError,
    CompressionError,
    DataError,
    DistillpruneError,
    ExportError,
    QuantizationError,
    RecipeError,
    TrainingDiverged,
)
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
from distillprune.recipes import Recipe, load_recipe
from distillprune.report import CompressionReport
from distillprune.train.context import Context, LoaderOptions, fit_trainer

__all__ = [
    "ArchSpec",
    "CheckpointError",
    "CompressionReport",
    "Context",
    "DataBundle",
    "DataConfig",
    "Examples",
    "LoaderOptions",
    "DataError",
    "DistillpruneError",
    "ExportError",
    "Recipe",
    "RecipeError",
    "TrainingDiverged",
    "build_model",
    "code_trust",
    "compress",
    "make_model",
    "export_onnx",
    "fit_trainer",
    "load_checkpoint",
    "load_data",
    "load_recipe",
    "measure_model",
    "parity",
    "save_checkpoint",
    "__version__",
    # distillation and pruning
    "DistillConfig",
    "DistillOptions",
    "DistillReport",
    "PruneConfig",
    "PruneReport",
    "PruneSession",
    "distill",
    "prune_",
    # quantization, low rank, clustering
    "ClusterConfig",
    "ClusterReport",
    "CompressionError",
    "LowRankConfig",
    "LowRankReport",
    "BF16Config",
    "DynamicConfig",
    "FP16Config",
    "QATConfig",
    "QuantConfig",
    "QuantResult",
    "StaticConfig",
    "QuantizationError",
    "cluster_",
    "lowrank_",
    "quantize",
]
