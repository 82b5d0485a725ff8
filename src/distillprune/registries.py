"""Every registry, by family: the CLI (``distillprune list``), the docs and the contract tests discover methods
here."""

from distillprune.core.checkpoint import ARCH_BUILDERS
from distillprune.core.history import HISTORY_OPS
from distillprune.core.registry import Registry
from distillprune.core.reporting import DETAILS
from distillprune.data.examples import EXAMPLES
from distillprune.data.sources import SOURCES
from distillprune.distill.losses import LOSSES
from distillprune.models import MODELS
from distillprune.models.registry import MODEL_SOURCES
from distillprune.prune.criteria import CRITERIA
from distillprune.prune.structure import STRUCTURES
from distillprune.quant import QUANTIZERS
from distillprune.recipes.registry import STAGES

REGISTRIES: dict[str, Registry] = {
    "models": MODELS,
    "model_sources": MODEL_SOURCES,
    "losses": LOSSES,
    "sources": SOURCES,
    "source_examples": EXAMPLES,
    "importance": CRITERIA,
    "structures": STRUCTURES,
    "quantizers": QUANTIZERS,
    "stages": STAGES,
    "history_ops": HISTORY_OPS,
    "report_kinds": DETAILS,
    "arch_sources": ARCH_BUILDERS,
}
