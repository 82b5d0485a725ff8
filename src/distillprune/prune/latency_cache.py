"""A per-machine cache of latency table entries (``prune.latency_table``), so that a second plan on the same
machine -- another target, another ``tune`` trial, a re-run -- times almost nothing.

An entry is the time of one layer shape on one runtime. The runtime is the key of a file: the ONNX Runtime
version, its provider, the intra-op threads, the batch size, the CPU model and its flags, and the version of
the way entries are timed (:data:`ENTRY_FORMAT`); ``<cache>/latency/<sha256 of the key>.json`` holds that
runtime's entries, and the key itself, which is checked on reading (a file whose key differs -- copied from
another machine, or written by another version -- is ignored with one line, as is a file that is not ours
or not readable: its entries are timed again and the file rewritten).

The cache folder is, in order: ``TargetConfig.latency_cache`` (a folder; ``false``: no cache), the
``DISTILLPRUNE_CACHE_DIR`` environment variable, ``$XDG_CACHE_HOME/distillprune``, ``~/.cache/distillprune``.
Nothing is written outside it: a file name is a hash, the folders below the cache folder are created one
level at a time and never through a symbolic link, and each file is written to a temporary file and renamed
(``core.io.atomic_write``), so a killed process or two processes writing at once leave a whole file. A cache
that cannot be written (read-only, a planted link) is one line, and the plan goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillprune.core.io import atomic_write, guard, loads
from distillprune.errors import DistillpruneError

__all__ = ["ENTRY_FORMAT", "LatencyCache", "cache_folder", "runtime_key"]

_log = logging.getLogger("distillprune.prune")

ENV = "DISTILLPRUNE_CACHE_DIR"
#: how an entry is timed (the one-layer graph, the statistic): a change makes every cached entry foreign
ENTRY_FORMAT = 1
FORMAT = "distillprune-latency-table"
MAX_BYTES = 32_000_000  # a cache file larger than this is not ours
_FIELDS = ("kind", "cin", "cout", "kernel", "stride", "padding", "dilation", "groups", "hw")


def cache_folder(option: str | bool | None = True) -> Path | None:
    """The cache folder ``option`` names (see the module docstring); None: no cache."""
    if option is False:
        return None
    if isinstance(option, str) and option:
        return Path(option).expanduser()
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "distillprune"


def cpu_identity() -> tuple[str, list[str]]:
    """The CPU model and its flags (``/proc/cpuinfo`` on Linux; the platform's processor name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), list[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted(set(value.split()))
    return model, flags


def runtime_key(threads: int, batch_size: int) -> dict[str, Any]:
    """What a latency table entry depends on besides the layer shape."""
    import onnxruntime as ort

    model, flags = cpu_identity()
    return {
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
        "threads": int(threads),
        "batch_size": int(batch_size),
        "cpu": model,
        "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
        "entry_format": ENTRY_FORMAT,
    }


def shape_key(shape: Any) -> str:
    """A layer shape as the text key of its entry (``conv 16 16 3x3 1x1 1x1 1x1 1 32x32``)."""
    parts = []
    for name in _FIELDS:
        v = getattr(shape, name)
        parts.append("x".join(str(int(i)) for i in v) if isinstance(v, tuple) else str(v))
    return " ".join(parts)


_KEY = re.compile(r"(conv|linear) (\d+) (\d+)" + r" (\d+)x(\d+)" * 4 + r" (\d+) (\d+)x(\d+)")


def parse_key(key: str) -> tuple | None:
    """The fields of a :func:`shape_key` (as ``LayerShape`` takes them), None when it is not one."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        return None
    n = [int(g) for g in m.groups()[1:]]
    if min(n) < 0 or n[0] < 1 or n[1] < 1 or n[10] < 1:
        return None
    pair = [(n[i], n[i + 1]) for i in (2, 4, 6, 8)]
    return (m.group(1), n[0], n[1], *pair, n[10], (n[11], n[12]))


class LatencyCache:
    """The entries of one runtime (``key``) in ``folder``: read once, written back with :meth:`flush`."""

    def __init__(self, folder: Path, key: dict[str, Any], log: Callable[[str], None] | None = None) -> None:
        self.folder, self.key = folder, key
        self.log = log or _log.warning
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.path = folder / "latency" / f"{digest[:32]}.json"
        self.entries: dict[str, float] = {}
        self.overhead: float | None = None
        self._dirty = False
        self._writable = True
        self._read()

    def _read(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return
        except OSError as e:
            self.log(f"latency cache {self.path} cannot be read ({e.strerror or type(e).__name__}): ignored")
            return
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        why = self._load(data)
        if why is not None:
            self.entries, self.overhead = {}, None
            self.log(f"latency cache {self.path} ignored: {why}; its entries are timed again")

    def _load(self, data: bytes) -> str | None:
        """Take the entries of ``data``; why it was not taken, or None."""
        if len(data) > MAX_BYTES:
            return f"larger than {MAX_BYTES} bytes"
        try:
            doc = loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            return f"not JSON ({type(e).__name__})"
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
            return "not a distillprune latency table"
        if doc.get("runtime") != self.key:
            runtime = doc.get("runtime")
            stored: dict[str, Any] = runtime if isinstance(runtime, dict) else {}
            differ = [k for k in self.key if stored.get(k) != self.key[k]] or ["its runtime key"]
            return f"timed on another runtime ({', '.join(differ)} differ)"
        bad = 0
        for k, v in doc["entries"].items():
            if parse_key(k) is None or not _time_ok(v):
                bad += 1
                continue
            self.entries[k] = float(v)
        over = doc.get("overhead_ms")
        self.overhead = float(over) if isinstance(over, (int, float)) and _time_ok(over) else None
        if bad:
            self.log(f"latency cache {self.path}: {bad} malformed entries ignored")
        return None

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, ms: float) -> None:
        self.entries[key] = float(ms)
        self._dirty = True

    def set_overhead(self, ms: float) -> None:
        self.overhead = float(ms)
        self._dirty = True

    def flush(self) -> None:
        """Write the entries (merged with what another process wrote meanwhile) if any is new."""
        if not self._dirty or not self._writable:
            return
        mine, over = dict(self.entries), self.overhead
        self.entries, self.overhead = {}, None
        self._read_quietly()
        self.entries.update(mine)
        self.overhead = over if over is not None else self.overhead
        doc = {"format": FORMAT, "runtime": self.key, "overhead_ms": self.overhead, "entries": self.entries}
        text = json.dumps(doc, indent=0, sort_keys=True)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            guard(self.folder)  # every level below the cache folder is checked: no write through a link
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except (OSError, DistillpruneError) as e:
            self._writable = False
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.log(f"latency cache {self.folder} cannot be written ({why}); planning goes on without it")
            return
        self._dirty = False

    def _read_quietly(self) -> None:
        log, self.log = self.log, lambda s: None
        try:
            self._read()
        finally:
            self.log = log


def _time_ok(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1e7
