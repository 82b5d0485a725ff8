"""Plans shared between runs that would make the same plan: ``tune`` trials whose plan-affecting knobs are equal
plan once, and the others reuse that plan.

A plan depends on the model it cuts, the teacher, the calibration and validation batches it scores with, the
target, the width options, the timing options and (``target.plan_recovery``) the recovery. :func:`plan_key` is
the hash of all of them (tensors by their bytes), so two trials share a plan exactly when every input of the
planner is equal -- a trial that draws another learning rate or KD temperature reuses it, one that draws other
``target.depth_fractions`` (or trains the model differently before the prune stage) plans again.

While :func:`shared_plans` is active (``tune`` wraps each trial in it), the planner looks its key up in the
store's folder (``<tune folder>/plans/<key>.json``) before planning and writes its plan there after. The files
are data (JSON, read with the library's depth-limited parser); one that cannot be read is ignored with one
line and planned again; each is written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.io import guard, loads, write_text

__all__ = ["PlanStore", "active_store", "plan_key", "shared_plans"]

_log = logging.getLogger("distillprune.prune")
_ACTIVE: ContextVar[PlanStore | None] = ContextVar("distillprune_plan_store", default=None)
MAX_BYTES = 16_000_000  # a plan file larger than this is not one of ours


class PlanStore:
    """Plans (or other planner results, as JSON) by key, in ``folder``; ``root``: a folder above it whose every
    level down to a file is checked for links when writing (``core.io.guard``)."""

    def __init__(self, folder: str | Path, root: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.root = None if root is None else Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"a plan key is a sha256 hex digest; got {key!r:.80}")
        return self.folder / f"{key}.json"

    def get(self, key: str, kind: str) -> dict[str, Any] | None:
        """The stored plan of ``key`` (written by a planner of ``kind``), or None."""
        path = self.path(key)
        if not path.is_file() or path.is_symlink():
            self.misses += 1
            return None
        try:
            data = path.read_bytes()[: MAX_BYTES + 1]
            doc = loads(data) if len(data) <= MAX_BYTES else None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            doc, why = None, type(e).__name__
        else:
            why = "not a stored plan"
        if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("key") != key or "plan" not in doc:
            _log.warning("stored %s %s ignored (%s); computed again", kind, path, why)
            self.misses += 1
            return None
        self.hits += 1
        plan = doc["plan"]
        return plan if isinstance(plan, dict) else None

    def put(self, key: str, kind: str, plan: dict[str, Any]) -> None:
        doc = {"kind": kind, "key": key, "plan": plan}
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            guard(self.root)
        write_text(self.path(key), json.dumps(doc, indent=1, default=str) + "\n")


def active_store() -> PlanStore | None:
    """The store the planner shares its plans through, or None (plan afresh)."""
    return _ACTIVE.get()


@contextmanager
def shared_plans(folder: str | Path | None) -> Iterator[PlanStore | None]:
    """Share plans through ``folder`` while the block runs (None: no sharing)."""
    store = None if folder is None else PlanStore(folder)
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def plan_key(*parts: Any) -> str:
    """The sha256 of ``parts``: modules by their structure and state, tensors by dtype, shape and bytes, pydantic
    models and plain data by their JSON."""
    h = hashlib.sha256()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, nn.Module):
        h.update(b"module:" + repr(obj).encode())
        for name, t in obj.state_dict().items():
            h.update(name.encode())
            _feed(h, t)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, BaseModel):
        h.update(f"config:{type(obj).__name__}:".encode() + obj.model_dump_json().encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq:{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(b"data:" + json.dumps(obj, sort_keys=True, default=str).encode())
