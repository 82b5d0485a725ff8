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
]:
    LOSSES.declare(f"distillprune.distill.losses.{_module}", _loss)

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

#: name -> factory of a Torch-Pruning ``Importance``
IMPORTANCE: Registry[Any] = Registry("importance criterion")
IMPORTANCE.declare("distillprune.prune.importance", "l1", "l2", "taylor", "bn_scale")

#: method -> ``fn(job: QuantJob) -> QuantResult``
QUANTIZERS: Registry[Any] = Registry("quantization method")
QUANTIZERS.declare("distillprune.quant.half", "fp16", "bf16")
QUANTIZERS.declare("distillprune.quant.ort_static", "static")
QUANTIZERS.declare("distillprune.quant.ort_dynamic", "dynamic")
QUANTIZERS.declare("distillprune.quant.qat", "qat")

REGISTRIES: dict[str, Registry[Any]] = {
    "models": MODELS,
    "losses": LOSSES,
    "sources": SOURCES,
    "importance": IMPORTANCE,
    "quantizers": QUANTIZERS,
    "stages": STAGES,
}
