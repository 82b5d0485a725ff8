"""Data sources (registry) and the resident tensor loader."""

from distillprune.data.base import DataBundle, Examples, Split, TensorLoader
from distillprune.data.config import AugmentConfig, DataConfig
from distillprune.data.sources import SOURCES, load_data
from distillprune.data.text import text as _text_source  # noqa: F401  (registers the 'text' source)

__all__ = ["DataBundle", "Examples", "Split", "TensorLoader", "DataConfig", "AugmentConfig", "SOURCES", "load_data"]
