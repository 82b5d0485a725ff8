"""Shared fixtures: tiny data on the CPU (digits ships with scikit-learn; nothing is downloaded)."""

from __future__ import annotations

import os

# The same floats on every x86 machine: the pinned numbers (tests/recipes/test_pinned.py) were recorded with
# AVX2 kernels, and on an AVX-512 machine ATen, oneDNN and MKL pick other kernels whose sums round
# differently, which moves a 10-epoch training curve by far more than its 2% tolerance (measured: epoch-2 loss
# 0.914 vs 0.865). Each of these is a ceiling read when the library first dispatches, so machines without
# AVX2 keep their own kernels. Set before torch is imported (subprocess CLI tests inherit them).
_CEILINGS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
for _var, _isa in _CEILINGS.items():
    os.environ.setdefault(_var, _isa)

# The planner's per-machine latency cache (prune.latency_cache) goes to a folder of this test session, never to
# the user's home; subprocess tests inherit it. Set before the library is imported.
import atexit  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_CACHE = tempfile.mkdtemp(prefix="distillprune-test-cache-")
os.environ["DISTILLPRUNE_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def digits_bundle():
    """sklearn's 8x8 digits as a resident DataBundle (1437 train / 360 test)."""
    from distillprune.data import DataConfig, load_data

    return load_data(DataConfig(source="digits"))


_CACHES = itertools.count()


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch):
    """Each test starts from an empty per-machine cache of its own (latency entries, block orders), so no test
    depends on what another one planned before it; the folder is made only when a test writes to it."""
    monkeypatch.setenv("DISTILLPRUNE_CACHE_DIR", os.path.join(_CACHE, f"t{next(_CACHES)}"))
    yield


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
