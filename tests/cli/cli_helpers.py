"""Running the real ``distillprune`` command in a subprocess, with this checkout's ``src`` first on the path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import distillprune

SRC = str(Path(distillprune.__file__).resolve().parents[1])


def cli_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": SRC + (os.pathsep + path if path else "")}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distillprune.cli", *args]


def start_cli(*args: str, cwd: str | Path | None = None) -> subprocess.Popen:
    """The command, started; SIGINT is restored to its default in the child (a test runner started in the
    background may ignore it, and the child would inherit that)."""
    return subprocess.Popen(
        cli_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=cwd,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
