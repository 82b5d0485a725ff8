"""What flows between stages: the current model with its spec, the dense teacher, data, report."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.io import write_json
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import snapshot
from distillprune.recipes.schema import Recipe
from distillprune.report.report import CompressionReport
from distillprune.train.logging import RunLogger


@dataclass
class RunState:
    recipe: Recipe
    data: DataBundle
    model: nn.Module
    spec: ArchSpec
    report: CompressionReport
    run_dir: Path | None
    logger: RunLogger
    resume: bool = False
    teacher: nn.Module | None = None
    teacher_spec: ArchSpec | None = None

    def stage_dir(self, index: int, kind: str) -> Path | None:
        return self.run_dir / "stages" / f"{index:02d}_{kind}" if self.run_dir else None

    def set_teacher(self, model: nn.Module, spec: ArchSpec) -> None:
        self.teacher, self.teacher_spec = snapshot(model), copy.deepcopy(spec)
        if self.run_dir:
            save_checkpoint(self.run_dir / "teacher", self.teacher, self.teacher_spec)

    def ensure_teacher(self) -> nn.Module:
        """The default teacher: the dense model as it was before the first compression stage."""
        if self.teacher is None:
            self.set_teacher(self.model, self.spec)
        assert self.teacher is not None
        return self.teacher

    def complete(self, index: int, kind: str) -> None:
        """Persist the model after a finished stage and the report so far (the resume point)."""
        if not self.run_dir:
            return
        save_checkpoint(self.stage_dir(index, kind), self.model, self.spec,
                        recipe=self.recipe.model_dump(mode="json"), stage=index)
        self.report.save(self.run_dir)
        write_json(self.run_dir / "state.json", {"completed": index, "kind": kind})


def restore(state: RunState) -> int:
    """Load the last completed stage of ``state.run_dir``; returns the number of completed stages."""
    assert state.run_dir is not None
    f = state.run_dir / "state.json"
    if not f.exists():
        return 0
    done = json.loads(f.read_text())
    state.model, state.spec, _ = load_checkpoint(state.stage_dir(done["completed"], done["kind"]))
    state.report = CompressionReport.load(state.run_dir)
    if (state.run_dir / "teacher" / "model.json").exists():
        t, state.teacher_spec, _ = load_checkpoint(state.run_dir / "teacher")
        state.teacher = snapshot(t)
    return int(done["completed"])


def probe_shapes(model: nn.Module, data: DataBundle, name: str) -> None:
    """Fail early, in one line, when the data's inputs or classes do not fit the model."""
    from distillprune.errors import DataError

    x = data.train.x[:2].float()
    try:
        with torch.no_grad():
            out = copy.deepcopy(model).cpu().eval()(x)
    except RuntimeError as e:
        raise DataError(f"data inputs of shape {tuple(data.input_shape)} do not fit model '{name}': "
                        f"{str(e).splitlines()[0]}") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise DataError(f"model '{name}' outputs {tuple(out.shape[1:])} per sample but the data has "
                        f"{data.num_classes} classes")
