"""One run at a time in a run folder: an ``flock``-ed ``run.lock`` held while a run writes the folder.

Two runs started into the same ``--out`` would interleave their files (``run.json`` from one, a stage's
checkpoint from the other). The first takes an exclusive ``flock`` on ``run.lock`` and writes who it is
(pid, host, start time) into it; the second finds the lock taken and says who holds it. The operating
system drops the lock when the holder exits, however it exits, so a crashed run never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from distillprune.core.io import UnsafePathError
from distillprune.core.run_files import LOCK
from distillprune.errors import DistillpruneError

_held: dict[str, int] = {}  # resolved folder -> fd of its lock file, for the runs of this process


class RunFolderBusy(DistillpruneError):
    """Another process holds the run folder's lock."""


def acquire(folder: Path) -> None:
    """Take the lock of ``folder`` (already held by this process: nothing to do), or raise RunFolderBusy."""
    key = str(folder.resolve())
    if key in _held:
        return
    try:  # never through a link planted as run.lock (dangling or not): O_NOFOLLOW
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise UnsafePathError(
            f"run folder {folder}: {LOCK} is a symbolic link (to {os.readlink(folder / LOCK)}); a run never "
            "writes through a link: remove it or choose another --out"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunFolderBusy(
            f"run folder {folder} is in use by another run ({holder}); wait for it to end or choose another --out"
        ) from None
    except OSError:  # a file system without flock (some network mounts): run unguarded rather than not at all
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    who = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.write(fd, (json.dumps(who) + "\n").encode())
    _held[key] = fd


def release_all() -> None:
    """Drop every run-folder lock this process holds (the end of a run, whatever its outcome)."""
    while _held:
        _, fd = _held.popitem()
        try:
            os.close(fd)  # closing the last descriptor releases the flock
        except OSError:
            pass


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        return f"pid {who['pid']} on host {who['host']}, started {who['started']}"[:200]  # text from a file
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"
