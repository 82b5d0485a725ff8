"""Model zoo (a registry of builders), the model config, your own classes and weights, and the builder of
checkpoints' base models."""

from distillprune.models import head as _head  # noqa: F401  (registers the head history ops)
from distillprune.models import user as _user  # noqa: F401  (registers the "python" architecture source)
from distillprune.models.build import make_model
from distillprune.models.config import HeadConfig, ModelConfig
from distillprune.models.mlp import MLP
from distillprune.models.registry import MODELS
from distillprune.models.resnet import BasicBlock, ResNet, cifar_resnet
from distillprune.models.zoo import build_model

__all__ = [
    "MODELS",
    "BasicBlock",
    "HeadConfig",
    "MLP",
    "ModelConfig",
    "ResNet",
    "build_model",
    "cifar_resnet",
    "make_model",
]
