"""What the HTML pages read from a run folder: report.json, metrics.jsonl and the recipe as run.

Only files, never live objects, so a run folder written by an older version renders too: each
piece that is missing (no metrics log, no stage checkpoint with a recipe) is ``None``/empty and
the page says so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillprune.core.io import loads
from distillprune.errors import DistillpruneError
from distillprune.report.report import CompressionReport


@dataclass
class RunData:
    report: CompressionReport
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    recipe: dict[str, Any] | None = None  # the resolved recipe, as the stage checkpoints stored it
    folder: Path | None = None
    name: str | None = None  # how pages and tables call the run (default: the folder's name)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.folder.name if self.folder is not None else self.report.recipe


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a torn last line (a killed run) and non-object lines are skipped."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "tag" in rec:
            out.append(rec)
    return out


def read_recipe(folder: str | Path) -> dict[str, Any] | None:
    """The resolved recipe from the latest stage checkpoint (``stages/NN_type/model.json``)."""
    for meta in sorted(Path(folder).glob("stages/*/model.json"), reverse=True):
        try:
            recipe = loads(meta.read_text()).get("recipe")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(recipe, dict):
            return recipe
    return None


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path`` (a folder or its report.json); one-line errors for anything else."""
    p = Path(path)
    if not p.exists():
        raise DistillpruneError(f"{p}: no such run folder")
    folder = p.parent if p.is_file() else p
    if not (folder / "report.json").is_file():
        raise DistillpruneError(f"{p}: not a run folder (no report.json in it)")
    return folder


def load_run(path: str | Path) -> RunData:
    folder = run_folder(path)
    report = CompressionReport.load(folder)
    return RunData(report, read_metrics(folder / "metrics.jsonl"), read_recipe(folder), folder)
