"""A small trained digits CNN, shared by the quantization / low-rank / clustering tests.

Parity thresholds only mean something on a trained model: an untrained one has near-tied logits,
so any rounding flips its top-1. Training is cached per process (a couple of seconds on a CPU).
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch

from distillprune.data import DataConfig, load_data
from distillprune.distill.distiller import CrossEntropy
from distillprune.models import build_model
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitSettings, evaluate, fit

SMALL = {"widths": (8, 16, 16), "blocks": (1, 1, 1)}
CPU = RuntimeConfig(device="cpu", progress=False, tensorboard=False)


@lru_cache(maxsize=1)
def digits():
    return load_data(DataConfig(source="digits"))


@lru_cache(maxsize=4)
def _trained(name: str, epochs: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    data = digits()
    kwargs = SMALL if name == "digits_cnn" else {"hidden": (64,)}
    model = build_model(name, 10, data.input_shape, **kwargs)
    fit(
        model,
        data,
        FitSettings(epochs, OptimizerConfig(lr=0.1), ScheduleConfig()),
        CrossEntropy(),
        context=Context(CPU, LoaderOptions(batch_size=64)),
    )
    return model.eval(), evaluate(model, data)


def trained(name: str = "digits_cnn", epochs: int = 3) -> torch.nn.Module:
    """A fresh copy of the cached trained model (tests may change it in place)."""
    return copy.deepcopy(_trained(name, epochs)[0])


def trained_accuracy(name: str = "digits_cnn", epochs: int = 3) -> float:
    return _trained(name, epochs)[1]
