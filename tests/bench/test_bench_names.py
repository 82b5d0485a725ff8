"""A script in ``bench/`` runs with ``bench/`` first on ``sys.path``: a file named like a standard-library module
(``ssl.py``, ``json.py``...) would shadow it for every benchmark -- ``import torch`` then fails deep in
``urllib`` with a circular import."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_no_bench_script_shadows_a_standard_library_module():
    names = {p.stem for p in BENCH.glob("*.py")}
    assert sorted(names & set(sys.stdlib_module_names)) == []
