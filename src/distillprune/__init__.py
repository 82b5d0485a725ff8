"""distillprune: knowledge distillation combined with pruning, measured, exported to ONNX.

Importing the package has no side effects (no env vars, no logging changes, no CUDA init; only the
``distillprune`` command's own process is set up, ``distillprune._process``) and imports nothing heavy: the
public names below load the library (``distillprune._library``: torch, ONNX Runtime, every family's
registrations) on first use, so the command answers ``--help``, ``list`` and ``report`` at once.
"""

# ruff: noqa: I001, F405  (_process first: it sets up the command's process before anything else; __all__ names
# the library's names, which load on first use)
from distillprune import _process  # noqa: F401
import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from distillprune._version import __version__
from distillprune.core.registry import set_library_loader
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

if TYPE_CHECKING:
    from distillprune._library import *  # noqa: F403


def _load_library() -> ModuleType:
    return importlib.import_module("distillprune._library")


set_library_loader(_load_library)

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(_load_library(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """``distillprune.distill`` is the verb, as ``from distillprune import distill`` has always given, although
    the ``distill`` subpackage shares the name: importing it sets this attribute, which must not hide the verb
    (the subpackage stays in ``sys.modules``, where its own imports find it)."""

    @property
    def distill(self) -> Any:
        return _load_library().distill

    @distill.setter
    def distill(self, subpackage: ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
