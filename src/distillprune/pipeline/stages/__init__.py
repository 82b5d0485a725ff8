"""The pipeline's stage types: one module each, registered with its config (``recipes.registry``) when
imported here. The import order is the order of ``distillprune list stages`` and of the README's table."""

# ruff: noqa: I001, F401  (registration, in pipeline order)
from distillprune.pipeline.stages import train
from distillprune.pipeline.stages import distill
from distillprune.pipeline.stages import prune
from distillprune.pipeline.stages import prune_transformer
from distillprune.pipeline.stages import finetune
from distillprune.pipeline.stages import lowrank
from distillprune.pipeline.stages import cluster
from distillprune.pipeline.stages import quantize
from distillprune.pipeline.stages import evaluate
from distillprune.pipeline.stages import export
