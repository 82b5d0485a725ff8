"""The pipeline: recipe stages run in order over one RunState."""

from distillprune.pipeline import stages as _stages  # noqa: F401  (registers the stage types)
from distillprune.pipeline.run import compress, execute
from distillprune.pipeline.state import RunState

__all__ = ["RunState", "compress", "execute"]
