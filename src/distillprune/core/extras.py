"""Importing an optional extra (torchvision, timm): one line naming the fix when it is missing or broken.

A torchvision wheel built for another torch build imports but fails to register its compiled operators
(``RuntimeError: operator torchvision::nms does not exist``), so ImportError alone is not enough to catch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from distillprune.errors import DistillpruneError

FIX = {
    "vision": "make vision (a venv with a matching torch + torchvision pair: bash scripts/install_torch.sh "
    "PYTHON vision, then pip install -e '.[vision]')",
    "hf": "pip install 'distillprune[hf]'",
    "tune": "pip install 'distillprune[tune]'",
}


class ExtraMissing(DistillpruneError):
    """An optional dependency is not installed, or does not work with the installed torch."""


def import_extra(module: str, extra: str, what: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or one line: what needed it, what went wrong, the fix."""
    need = f"{what} needs {module}" if what else f"{module} is needed"
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"not installed ({e})" if isinstance(e, ModuleNotFoundError) else f"broken ({e})"
    except (RuntimeError, OSError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        reason = f"does not work with torch here ({first}): it was built for another torch build"
    raise ExtraMissing(f"{need}, which is {reason}; fix: {FIX.get(extra, f'pip install distillprune[{extra}]')}")
