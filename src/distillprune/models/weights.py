"""A user's trained weights: a state_dict in ``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)``,
never unpickling code) or ``.safetensors``, loaded into a model with one line naming what does not fit."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from distillprune.core.io import check_tensors, read_safetensors
from distillprune.errors import CheckpointError

SHOWN = 3  # keys named per kind of mismatch


def read_state_dict(path: str | Path, where: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file. Wrappers that training scripts write (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped, and a ``module.`` prefix on every key (DataParallel) is dropped."""
    p = Path(path).expanduser()
    if p.is_dir():
        hint = (
            " (a distillprune checkpoint: use model.checkpoint / teacher: <folder>)"
            if (p / "model.json").exists()
            else ""
        )
        raise CheckpointError(f"{where}: {p} is a folder, expected a .pt or .safetensors file{hint}")
    if not p.is_file():
        raise CheckpointError(f"{where}: file not found: {p}")
    if p.suffix == ".safetensors":
        obj: object = read_safetensors(p, f"{where}: {p}")
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises UnpicklingError, RuntimeError, EOFError...
            raise CheckpointError(
                f"{where}: {p}: not a state_dict that loads with weights_only=True "
                f"({weights_only_failure(e)}); save it with torch.save(model.state_dict(), path)"
            ) from None
    return _tensors(obj, p, where)


def weights_only_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: the global the pickle asked for
    (it never ran), without torch's advice to load it with ``weights_only=False`` (that would run it)."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"(Unsupported global|Trying to load unsupported)[^.\n]*", text)
        return "a pickle of more than tensors, never unpickled" + (f": {found.group(0)}" if found else "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _tensors(obj: object, p: Path, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):  # pragma: no cover - weights_only never returns a module
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{where}: {p}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"{where}: {p}: '{bad[0]}' is a {type(obj[bad[0]]).__name__}, not a tensor; "
            "expected a state_dict of tensors"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    check_tensors(state, f"{where}: {p}")
    return state


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _first(keys: list[str], state: Mapping[str, torch.Tensor]) -> str:
    shown = ", ".join(f"{k} {_shape(state[k])}" for k in keys[:SHOWN])
    return shown + (f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], skip: Iterable[str] = ()) -> str | None:
    """What keeps ``state`` from loading into ``model`` (first keys and shapes of each kind), or None.
    Keys under a ``skip`` prefix (a classifier being replaced) are left out on both sides."""
    skip = tuple(skip)

    def kept(k: str) -> bool:
        return not any(k == s or k.startswith(s + ".") for s in skip)

    own = {k: v for k, v in model.state_dict().items() if kept(k)}
    given = {k: v for k, v in state.items() if kept(k)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [k for k in own if k in given and own[k].shape != given[k].shape]
    parts = []
    if missing:
        parts.append(f"missing {_first(missing, own)}")
    if unexpected:
        parts.append(f"unexpected {_first(unexpected, given)}")
    if shapes:
        parts.append(
            "shape "
            + ", ".join(f"{k}: file {_shape(given[k])} vs model {_shape(own[k])}" for k in shapes[:SHOWN])
            + (f" (+{len(shapes) - SHOWN} more)" if len(shapes) > SHOWN else "")
        )
    return "; ".join(parts) or None


def load_weights(model: nn.Module, path: str | Path, where: str = "weights", skip: Iterable[str] = ()) -> None:
    """Load the state_dict file at ``path`` into ``model``; every key must fit except those under ``skip``."""
    state = read_state_dict(path, where)
    skip = tuple(skip)
    problem = mismatch(model, state, skip)
    if problem:
        raise CheckpointError(f"{where}: {path} does not fit {type(model).__name__}: {problem}")
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and not any(k == s or k.startswith(s + ".") for s in skip)}
    model.load_state_dict(keep, strict=not skip)
