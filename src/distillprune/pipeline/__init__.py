"""The pipeline: recipe stages run in order over one RunState."""
from distillprune.pipeline.run import compress, execute

__all__ = ["compress", "execute"]
