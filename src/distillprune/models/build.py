"""The one entry point from a model config to a model and the spec that rebuilds it: a zoo name (torchvision
and timm included), your own class (``python:``) or a distillprune checkpoint, optionally with your trained
``weights`` and a new ``head``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distillprune.core.checkpoint import ArchSpec, load_checkpoint
from distillprune.core.config import validate
from distillprune.core.modules import get_module, set_module
from distillprune.errors import DistillpruneError
from distillprune.models.config import ModelConfig
from distillprune.models.head import ClassifierOp, classifier_path, drop_classifier, fold_small_pool
from distillprune.models.registry import MODEL_SOURCES
from distillprune.models.user import python_model, target_of
from distillprune.models.weights import file_sha256, load_weights
from distillprune.models.zoo import build_model


def as_config(cfg: ModelConfig | dict[str, Any], where: str = "model") -> ModelConfig:
    """A ModelConfig from a config or its dict; in Python, ``python`` may be the class or factory itself."""
    if isinstance(cfg, ModelConfig):
        return cfg
    raw = dict(cfg)
    if raw.get("python") is not None and not isinstance(raw["python"], str):
        raw["python"] = target_of(raw["python"])
    return validate(ModelConfig, raw, where=where)


def make_model(
    cfg: ModelConfig | dict[str, Any],
    num_classes: int,
    input_shape: Sequence[int],
    where: str = "model",
    load_weights_file: bool = True,
) -> tuple[nn.Module, ArchSpec]:
    """Build the model a config describes and the :class:`ArchSpec` that rebuilds it (``save_checkpoint`` /
    ``load_checkpoint`` then need no ``base=``).

    ``{"name": "resnet20"}``, ``{"name": "torchvision", "kwargs": {"arch": "resnet18"}, "weights": "r18.pt"}``,
    ``{"python": "my_net.py:MyNet", "kwargs": {"width": 32}, "weights": "my_net.safetensors"}`` (or the class
    itself in Python), ``{"checkpoint": "runs/x/stages/02_prune"}``; ``head: {}`` replaces the classifier
    by a fresh one for ``num_classes`` (the file's classifier is not loaded) and folds an enlarging pool.
    ``load_weights_file=False`` builds the architecture only (checks before a run, the meta device).
    ``task: embedding`` drops the classifier (``models.head.EmbeddingOp``): the model outputs its features.
    """
    cfg = as_config(cfg, where)
    if cfg.checkpoint:
        model, spec, _ = load_checkpoint(cfg.checkpoint)
        return model, spec
    if cfg.source != "zoo":  # another registered source (hf: a local Hugging Face folder)
        return MODEL_SOURCES.get(cfg.source)(cfg, num_classes, tuple(input_shape))
    n = cfg.head.num_classes if cfg.head is not None and cfg.head.num_classes else num_classes
    if cfg.task == "embedding":  # a data set without labels has no classes: the classifier is dropped anyway
        n = n or 1
    shape = tuple(input_shape)
    if cfg.python:
        model, spec = python_model(cfg.python, n, shape, cfg.kwargs)
    else:
        model = build_model(cfg.name, n, shape, **cfg.kwargs)
        spec = ArchSpec(cfg.name, n, list(shape), dict(cfg.kwargs))
    skip: tuple[str, ...] = ()
    if cfg.head is not None:
        skip = (_new_classifier(model, spec, n, where),)
    if cfg.task == "embedding":  # a backbone: the file's classifier (if any) is not loaded
        dropped = drop_classifier(model, where)
        spec.record(dropped)
        skip = (*skip, dropped.path)
    if cfg.weights and load_weights_file:
        load_weights(model, cfg.weights, where=f"{where}.weights", skip=skip)
        p = Path(cfg.weights).expanduser().resolve()
        spec.ref.update({"weights": str(p), "weights_sha256": file_sha256(p)})
    if cfg.head is not None and cfg.head.fold_pool:
        op = fold_small_pool(model, shape)
        if op is not None:
            spec.record(op)
    return model, spec


def _new_classifier(model: nn.Module, spec: ArchSpec, n: int, where: str) -> str:
    path = classifier_path(model)
    if path is None:
        raise DistillpruneError(f"{where}.head: {type(model).__name__} has no Linear classifier to replace")
    lin = get_module(model, path)
    assert isinstance(lin, nn.Linear)  # classifier_path names a Linear
    if lin.out_features != n:
        op = ClassifierOp(path, lin.in_features, n)
        set_module(model, path, nn.Linear(lin.in_features, n, bias=lin.bias is not None))
        spec.record(op)
    else:
        lin.reset_parameters()
    return path


@MODEL_SOURCES.register("zoo")
def zoo_source(cfg: ModelConfig, num_classes: int, input_shape: Sequence[int]) -> tuple[nn.Module, ArchSpec]:
    """A recipe's ``model.name`` from the zoo or ``model.python`` (your class), with weights and head."""
    return make_model(cfg, num_classes, input_shape)
