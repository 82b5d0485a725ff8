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


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need CUDA: skipped (with the reason) where there is none, as in CI."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
