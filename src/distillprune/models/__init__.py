"""Model zoo (a registry of builders), the model config, and the builder of checkpoints' base models."""
from distillprune.models.config import ModelConfig
from distillprune.models.mlp import MLP
from distillprune.models.registry import MODELS
from distillprune.models.resnet import BasicBlock, ResNet, cifar_resnet
from distillprune.models.zoo import build_model

__all__ = ["MODELS", "BasicBlock", "MLP", "ModelConfig", "ResNet", "build_model", "cifar_resnet"]
