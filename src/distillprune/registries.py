"""Every registry, by family: the CLI, the docs and the contract tests discover methods here.

The registries that ``distillprune list`` shows live here (the stage registry in ``recipes.registry``), each
with its built-in names *declared* next to the module that registers them: listing or validating a name
imports nothing (no torch), and the module loads when a method is first looked up (``Registry.declare``).
Adding a built-in method is its module, its ``@REGISTRY.register(name)``, and its line below; the contract
tests fail when the two disagree. Methods registered from elsewhere (a plugin, a test's toy) need no line.
"""

from __future__ import annotations

from typing import Any

from distillprune.core.registry import Registry
from distillprune.recipes.registry import STAGES

#: name -> ``fn(DataConfig) -> DataBundle``
SOURCES: Registry[Any] = Registry("data source")
SOURCES.declare(
    "distillprune.data.sources", "digits", "npz", "cifar10_jpeg", "cifar10_bin", "imagefolder", "torchvision", "hf"
)
SOURCES.declare("distillprune.data.text", "text")

#: name -> ``DistillLoss`` subclass (types named as ``Any``: the loss base class imports torch)
LOSSES: Registry[Any] = Registry("distillation loss")
for _loss, _module in [
    ("aligned", "aligned"),
    ("at", "attention"),
    ("ce", "ce"),
    ("crd", "crd"),
    ("dist", "dist"),
    ("kd", "kd"),
    ("dkd", "dkd"),
    ("embedding", "embedding"),
    ("fitnet", "feature"),
    ("hidden", "hidden"),
    ("mimic", "mimic"),
    ("minilm", "minilm"),
    ("pkt", "pkt"),
    ("rkd", "rkd"),
    ("seed", "seed"),
]:
    LOSSES.declare(f"distillprune.distill.losses.{_module}", _loss)

#: name -> ``ssl.SSLMethod`` subclass (a self-supervised objective: SimCLR, BYOL, masked language modelling)
SSL_METHODS: Registry[Any] = Registry("self-supervised method")
SSL_METHODS.declare("distillprune.ssl.methods.simclr", "simclr")
SSL_METHODS.declare("distillprune.ssl.methods.byol", "byol")
SSL_METHODS.declare("distillprune.ssl.methods.mlm", "mlm")

#: name -> builder ``(num_classes, input_shape, **kwargs) -> nn.Module``
MODELS: Registry[Any] = Registry("model")
MODELS.declare(
    "distillprune.models.zoo",
    *(f"resnet{d}" for d in (20, 32, 44, 56, 110)),
    "digits_cnn",
    "resnet",
    "mlp",
    "torchvision",
    "timm",
)

#: name -> ``prune.criteria.Criterion`` subclass (each says the family whose groups it scores)
CRITERIA: Registry[Any] = Registry("importance criterion")
CRITERIA.declare("distillprune.prune.criteria", "l1", "l2", "taylor", "bn_scale")
CRITERIA.declare("distillprune.transformers.importance", "fisher")

#: method -> the scheme's config class (a ``QuantConfig``), which carries its quantizer (``quant.registry``)
QUANTIZERS: Registry[Any] = Registry("quantization method")
QUANTIZERS.declare("distillprune.quant.half", "fp16", "bf16")
QUANTIZERS.declare("distillprune.quant.ort_static", "static")
QUANTIZERS.declare("distillprune.quant.ort_dynamic", "dynamic")
QUANTIZERS.declare("distillprune.quant.qat", "qat")

REGISTRIES: dict[str, Registry[Any]] = {
    "models": MODELS,
    "losses": LOSSES,
    "ssl": SSL_METHODS,
    "sources": SOURCES,
    "importance": CRITERIA,
    "quantizers": QUANTIZERS,
    "stages": STAGES,
}

#: the registries the library fills as it loads (reading one imports the library, torch included): ``distillprune
#: list <name>`` shows one, ``list`` (all) does not, so it stays free of torch
INTERNAL: dict[str, str] = {
    "model_sources": "distillprune.models.registry:MODEL_SOURCES",
    "source_examples": "distillprune.data.examples:EXAMPLES",
    "structures": "distillprune.prune.structure:STRUCTURES",
    "history_ops": "distillprune.core.history:HISTORY_OPS",
    "report_kinds": "distillprune.core.reporting:DETAILS",
    "arch_sources": "distillprune.core.checkpoint:ARCH_BUILDERS",
}


def internal(name: str) -> Registry[Any]:
    """The internal registry ``name`` of ``INTERNAL`` (its module is imported)."""
    import importlib

    module, attr = INTERNAL[name].split(":")
    reg: Registry[Any] = getattr(importlib.import_module(module), attr)
    return reg
