"""What the ``distillprune`` command does to its own process before anything heavy (torch) is imported.

Imported first thing by the package's ``__init__`` (the import runs :func:`prepare`); it does nothing unless
this process is the command (``distillprune ...`` or ``python -m distillprune.cli ...``), so importing the
library has no side effects.

* Ctrl-C while torch is still importing, or while the interpreter shuts down after the command, exits 130
  with the boundary's one line (Python's default would print a traceback and die of the signal, -2). While
  the command runs, the handler raises ``KeyboardInterrupt`` as Python's does, for the boundary to report.
  ``kill`` (SIGTERM: a job scheduler, ``timeout``, torchrun stopping its workers) is handled the same way: the
  same line with the command that resumes the run, exit 130 (Python's default dies silently, -15).
* ``SIGXFSZ`` (a write over ``ulimit -f``) is ignored, so the write fails with ``EFBIG`` and the boundary
  says so in one line instead of the process dying of the signal with a core dump.
* A closed stdout or stderr (``>&-``) is reopened on ``/dev/null``: Python would leave ``sys.stdout`` None,
  and the first file the run opens would get descriptor 1 (and whatever a library prints).
* Thread counts in the environment that are not positive integers (``OMP_NUM_THREADS=0`` or ``abc``) are
  dropped before OpenMP reads them and prints a warning; ``runtime.threads`` sets the count anyway.
* A HOME whose cache folders cannot be written (read-only, not a folder): ONNX Runtime (its telemetry
  device id, under ``$XDG_CACHE_HOME``) and matplotlib (``$MPLCONFIGDIR``) would each print a warning on
  every run; they get a temporary folder of this process instead (removed at exit). A writable HOME is
  left alone (the Hugging Face cache lives there too).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: the line a Ctrl-C prints when no run folder holds anything to resume (the boundary's too)
NOTHING_TO_RESUME = "interrupted before any run folder was written; nothing to resume (run the command again)"


class _State:
    cli = False  # this process is the command
    in_command = False  # the boundary is running a command (it reports KeyboardInterrupt itself)
    #: the one line a Ctrl-C outside the command prints; the boundary sets it when it is imported (this
    #: module imports nothing of the package, so that it can run before torch)
    interrupted: Callable[[], str] = staticmethod(lambda: NOTHING_TO_RESUME)


state = _State()


def is_cli_process() -> bool:
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1] in ("distillprune.cli", "distillprune")
    return bool(sys.argv) and Path(sys.argv[0]).name == "distillprune"


def prepare() -> None:
    """Set up the command's process (see the module docstring); nothing for any other process."""
    if state.cli or not is_cli_process():
        return
    state.cli = True
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigint)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _reopen_closed_streams()
    for name in THREAD_VARIABLES:
        value = os.environ.get(name)
        if value is not None and not (value.strip().isdigit() and int(value) > 0):
            del os.environ[name]
    _writable_caches()


def _writable_caches() -> None:
    home = Path(os.path.expanduser("~"))
    wanted = {
        "XDG_CACHE_HOME": Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache"),
        "MPLCONFIGDIR": Path(os.environ.get("MPLCONFIGDIR") or home / ".config" / "matplotlib"),
    }
    spare: str | None = None
    for name, folder in wanted.items():
        if _can_write(folder):
            continue
        if spare is None:
            spare = tempfile.mkdtemp(prefix="distillprune-cache-")
            atexit.register(shutil.rmtree, spare, True)
        os.environ[name] = os.path.join(spare, name.lower())


def _can_write(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if state.in_command:
        raise KeyboardInterrupt
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.write(2, (state.interrupted() + "\n").encode())
    except OSError:
        pass
    os._exit(130)


def _reopen_closed_streams() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process


def silence_stdout() -> None:
    """After a reader closed the pipe (``distillprune list | head -c1``): point stdout at /dev/null so the
    interpreter's final flush does not raise again (the command process only)."""
    if not state.cli:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


prepare()
