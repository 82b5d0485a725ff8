"""The pipeline's stage types: one module each, registered with its config (``recipes.registry``).

Import order is the order of ``distillprune list stages`` and of the README's stage table."""
from distillprune.pipeline.stages import (  # noqa: F401  (registration)
    cluster,
    distill,
    evaluate,
    export,
    finetune,
    lowrank,
    prune,
    quantize,
    train,
)
