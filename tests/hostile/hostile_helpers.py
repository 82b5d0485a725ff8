"""Helpers of the hostile-input tests (issue 27): each case runs the real command in this process
(``distillprune.cli.main``) and must end in one line on stderr and exit code 2 (or the documented clean
outcome), with every file outside the run folder as it was and no marker file created."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from distillprune.cli import main

#: a recipe that trains in about a second: an MLP on 64 digits, no latency measured
RECIPE = {
    "name": "hostile",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "limit_train": 64, "limit_test": 32, "batch_size": 32},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False},
    "stages": [{"type": "train", "epochs": 1}],
}


def write_recipe(path: Path, recipe: dict | None = None, **changes) -> Path:
    path.write_text(yaml.safe_dump({**(recipe or RECIPE), **changes}, sort_keys=False))
    return path


def run(capsys, *args: object) -> tuple[int, str]:
    """``distillprune ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()  # what the test's own set-up printed is not the command's
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(capsys, *args: object, match: str = "") -> str:
    """Run the command; it must exit 2 with one line on stderr (containing ``match``); returns that line."""
    code, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    return lines[0]


class UserFiles:
    """A user's folder beside the run: files that must come through every case unchanged."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "notes.txt").write_text("the user's notes\n")
        (root / "best.yaml").write_text("# the user's own best.yaml\n")
        (root / "folder").mkdir(exist_ok=True)
        (root / "folder" / "keep.txt").write_text("keep me\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, str]:
        out = {}
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                p = Path(folder) / name
                rel = str(p.relative_to(self.root))
                out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    def unchanged(self) -> bool:
        return self.snapshot() == self.before
