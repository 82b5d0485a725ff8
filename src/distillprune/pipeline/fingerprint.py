"""The fingerprint of a run's data files, recorded in ``run.json`` so ``--resume`` refuses other data at the
same path (a resumed run would otherwise continue training a model of one data set on another).

A file up to ``FULL_HASH_BYTES`` is hashed whole; a larger one by its size, its modification time and the
hash of three samples (start, middle, end). A folder is fingerprinted by the sorted list of its files'
relative paths, sizes and modification times (up to ``MAX_FILES``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

FULL_HASH_BYTES = 64 * 2**20
SAMPLE_BYTES = 2**20
MAX_FILES = 200_000


def fingerprint(path: str | None) -> dict[str, Any] | None:
    """The fingerprint of the data at ``path`` (None without a path or when nothing is there)."""
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        if p.is_file():
            return _file(p)
        if p.is_dir():
            return _folder(p)
    except OSError:
        return None
    return None


def _file(p: Path) -> dict[str, Any]:
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
            return {"kind": "file", "size": st.st_size, "sha256": h.hexdigest()}
        for at in (0, st.st_size // 2, st.st_size - SAMPLE_BYTES):
            f.seek(at)
            h.update(f.read(SAMPLE_BYTES))
    return {"kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": h.hexdigest()}


def _folder(p: Path) -> dict[str, Any]:
    h, n = hashlib.sha256(), 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            n += 1
            if n >= MAX_FILES:
                return {"kind": "folder", "files": n, "listing_sha256": h.hexdigest(), "truncated": True}
    return {"kind": "folder", "files": n, "listing_sha256": h.hexdigest()}


def difference(then: Any, now: dict[str, Any] | None) -> str | None:
    """What changed between a recorded fingerprint and the data now (None: the same, or nothing recorded)."""
    if not isinstance(then, dict) or not then:
        return None
    if now is None:
        return "it is gone"
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            return f"its {key} was {then.get(key)!r}, is {now.get(key)!r}"
    return None
