"""Data sources (registry) and the resident tensor loader."""
from distillprune.data.base import DataBundle, Split, TensorLoader
from distillprune.data.config import AugmentConfig, DataConfig
from distillprune.data.sources import SOURCES, load_data

__all__ = ["DataBundle", "Split", "TensorLoader", "DataConfig", "AugmentConfig", "SOURCES", "load_data"]
