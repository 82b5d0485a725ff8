"""Fixtures of the hostile-input tests (issue 27); the helpers are in ``hostile_helpers``."""

from __future__ import annotations

import pytest
import torch
from hostile_helpers import UserFiles


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def user(tmp_path) -> UserFiles:
    return UserFiles(tmp_path / "user")
