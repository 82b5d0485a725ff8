"""Every registry, by family: the CLI, the docs and the contract tests discover methods here."""

from distillprune.core.registry import Registry
from distillprune.data.sources import SOURCES
from distillprune.distill.losses import LOSSES
from distillprune.models import MODELS
from distillprune.prune.importance import IMPORTANCE
from distillprune.quant import QUANTIZERS
from distillprune.recipes.registry import STAGES
from distillprune.ssl import SSL_METHODS

REGISTRIES: dict[str, Registry] = {
    "models": MODELS,
    "losses": LOSSES,
    "ssl": SSL_METHODS,
    "sources": SOURCES,
    "importance": IMPORTANCE,
    "quantizers": QUANTIZERS,
    "stages": STAGES,
}
