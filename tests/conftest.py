"""Shared fixtures: tiny data on the CPU (digits ships with scikit-learn; nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def digits_bundle():
    """sklearn's 8x8 digits as a resident DataBundle (1437 train / 360 test)."""
    from distillprune.data import DataConfig, load_data

    return load_data(DataConfig(source="digits"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield
