"""Where a run computes and in which precision: the device a ``RuntimeConfig`` names and its autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from distillprune.train.config import RuntimeConfig


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """CUDA when the runtime asks for it (or says auto and one is there), else the CPU."""
    if runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(runtime: RuntimeConfig, device: torch.device) -> AbstractContextManager[object]:
    """The runtime's mixed precision on ``device`` (bf16 / fp16), or nothing."""
    if runtime.amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if runtime.amp == "bf16" else torch.float16)
