"""Atomic file writes: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` (its return value is ignored), fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file should get the mode open() would give
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


PACKAGE_PREFIX = "package:"


def resolve_folder(path: str, where: str) -> Path:
    """A folder, or ``package:NAME/sub/dir``: a folder shipped inside an installed Python package (a model
    packaged for offline use). ``where`` names the option in the error."""
    import importlib.util

    from distillprune.errors import DistillpruneError

    if path.startswith(PACKAGE_PREFIX):
        name, _, sub = path[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(name) if name else None
        if spec is None or not spec.submodule_search_locations:
            raise DistillpruneError(f"{where} {path!r}: no installed package {name!r} (pip install it)")
        p = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        p = Path(path).expanduser()
    if not p.is_dir():
        raise DistillpruneError(f"{where}: no folder {p}")
    return p


#: JSON files of ours nest a few levels; a file nested deeper is not ours (and json's recursive decoder would
#: overflow the stack on 20,000 levels, an internal error instead of one line)
MAX_JSON_DEPTH = 100
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def loads(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` with a ``json.JSONDecodeError`` (so callers
    that already handle damaged JSON handle this too), before the recursive decoder sees it."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > max_depth:
                raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, m.start())
        elif c in "]}":
            depth -= 1
    return json.loads(text)


def check_finite(tensors: dict[str, Any], where: str) -> None:
    """Refuse a state dict with a NaN or infinite floating-point weight: every number computed from it
    (accuracy, exported outputs) would be garbage reported with exit 0."""
    import torch

    from distillprune.errors import CheckpointError

    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{where}: weight {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}")
