"""What flows between stages: the current model with its spec, the dense teacher, data, report; and the
small services stage adapters share (training with per-epoch checkpoints, teachers, new models)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from distillprune.core.batch import NamedInputs, call, is_embedder
from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.io import write_json
from distillprune.core.run_files import RESERVED
from distillprune.data.base import DataBundle
from distillprune.distill.config import DistillConfig
from distillprune.distill.distiller import snapshot
from distillprune.distill.modes import Objective, build_peer, objective_for, resolve_teacher, teacher_of
from distillprune.errors import DataError, RecipeError
from distillprune.models.build import make_model
from distillprune.models.config import ModelConfig
from distillprune.pipeline.probe import Probe
from distillprune.pipeline.rundir import read_state
from distillprune.report.report import CompressionReport
from distillprune.ssl.config import SSLConfig
from distillprune.train import distributed as ddp
from distillprune.train import policy
from distillprune.train.config import Span, TrainingOptions
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.device import resolve_device
from distillprune.train.logging import RunLogger
from distillprune.train.policy import Regime
from distillprune.train.trainer import FitRun, FitSettings, fit
from distillprune.train.trainers import Trainer

if TYPE_CHECKING:
    from distillprune.pipeline.timing import StageTimer
    from distillprune.recipes.schema import Recipe


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
    timer: StageTimer | None = None  # set by the runner: times every stage against the dense baseline
    probe: Probe | None = None  # the recipe's probe data (kNN / linear-probe top-1 of every measured stage)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.recipe.runtime)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder: it has one, and under torchrun it is rank 0."""
        return self.run_dir is not None and ddp.is_rank0()

    def stage_dir(self, index: int, kind: str) -> Path | None:
        return self.run_dir / "stages" / f"{index:02d}_{kind}" if self.run_dir else None

    def output_path(self, name: str, where: str) -> Path | None:
        """``run_dir / name`` for a file a recipe names (None without a run folder, and on ranks other than 0);
        a name that would leave the run folder is an error (``where`` names the recipe key)."""
        if self.run_dir is None:
            return None
        path = confined(self.run_dir, name, where)
        return path if self.writes else None

    # -- teachers and objectives -------------------------------------------------------------------------
    def set_teacher(self, model: nn.Module, spec: ArchSpec) -> None:
        self.teacher, self.teacher_spec = snapshot(model), copy.deepcopy(spec)
        if self.run_dir and self.writes:
            save_checkpoint(self.run_dir / "teacher", self.teacher, self.teacher_spec)

    def ensure_teacher(self) -> nn.Module:
        """The default teacher: the dense model as it was before the first compression stage."""
        if self.teacher is None:
            self.set_teacher(self.model, self.spec)
        assert self.teacher is not None
        return self.teacher

    def resolve_teacher(self, cfg: DistillConfig) -> nn.Module:
        return resolve_teacher(cfg, self.ensure_teacher, self.data.num_classes, self.data.input_shape)

    def peer(self, cfg: DistillConfig) -> nn.Module | None:
        """Mutual mode's second network when the recipe names one (else the objective copies the teacher)."""
        return build_peer(cfg, self.recipe.seed, self.data.num_classes, self.data.input_shape)

    def objective(
        self,
        cfg: DistillConfig | None,
        label_smoothing: float,
        teacher: nn.Module | None = None,
        ssl: SSLConfig | None = None,
    ) -> Objective:
        """The training objective of a stage's ``distill`` block (cross-entropy when it is null), or of its
        ``ssl`` block (self-supervised: no teacher, no labels)."""
        peer = self.peer(cfg) if cfg is not None else None
        return objective_for(
            cfg,
            label_smoothing,
            (lambda: teacher) if teacher is not None else (lambda: self.resolve_teacher(cfg)),  # type: ignore[arg-type]
            peer,
            ssl,
            self.tokenizer(),
        )

    def tokenizer(self) -> str | None:
        """The run's tokenizer folder (text data), for objectives that read token ids (masked LM)."""
        return self.recipe.data.text.tokenizer

    def teacher_for(self, cfg: DistillConfig | None) -> nn.Module | None:
        """What a stage passes a verb as ``teacher=`` for its ``distill`` block: None without one; in mutual mode
        with a named ``peer``, that fresh network (the verb trains a copy of it with the student); else the
        resolved teacher (``auto``: the run's dense teacher)."""
        d = self.data
        return teacher_of(cfg, self.ensure_teacher, self.recipe.seed, d.num_classes, d.input_shape)

    # -- training ----------------------------------------------------------------------------------------
    def context(self) -> Context:
        """The verbs' context of this run: its runtime, its data's batch size and augmentation, the recipe's
        seed and its ``measure`` block."""
        r, d = self.recipe, self.recipe.data
        return Context(
            r.runtime, LoaderOptions(d.batch_size, r.seed, d.augment.crop_padding, d.augment.hflip), r.measure
        )

    def trainer(self, opts: TrainingOptions, index: int, kind: str) -> Trainer:
        """A verb's trainer inside stage ``index``: ``fit`` as ``RunState.fit`` runs it (``fit_with``: checkpoints
        every epoch under ``stages/<index>_<kind>/<tag>``, for ``--resume``)."""

        def train(
            model: nn.Module,
            objective: nn.Module,
            epochs: float,
            tag: str,
            on_step: Callable[[nn.Module], None] | None = None,
            span: Span | None = None,
            regime: Regime = "finetune",
        ) -> list[dict]:
            if model is not self.model:
                raise RecipeError(f"stage {index} ({kind}): the verb trains another model than the run's")
            settings = policy.settings(opts, epochs, regime, span)
            return self.fit_with(settings, objective, index, self.fit_run(index, kind, tag, on_step))

        return train

    def fit(
        self,
        opts: TrainingOptions,
        epochs: float,
        objective: nn.Module,
        index: int,
        tag: str,
        regime: Regime = "finetune",
    ) -> list[dict]:
        """Train the current model with the recipe's data and runtime; checkpoints every epoch under the
        stage's folder, so ``--resume`` continues inside a stage. ``regime``: where the model starts, unless the
        options name one (``train.policy``: scratch, or a fine-tune of trained weights)."""
        settings = policy.settings(opts, epochs, regime, None)
        return self.fit_with(settings, objective, index, self.fit_run(index, tag))

    def fit_run(
        self, index: int, tag: str, sub: str = "train", on_step: Callable[[nn.Module], None] | None = None
    ) -> FitRun:
        """What a run adds to a ``fit`` inside stage ``index``: a checkpoint every epoch under
        ``stages/<index>_<tag>/<sub>``, ``--resume``, the run's logger, ``on_step`` and the run's name."""
        ckpt = self.stage_dir(index, tag)
        desc = f"{index}:{tag}" + (f"/{sub}" if sub != "train" else "")
        return FitRun(ckpt / sub if ckpt else None, self.resume, self.logger, on_step, desc)

    def fit_with(self, settings: FitSettings, objective: nn.Module, index: int, run: FitRun) -> list[dict]:
        """Every training of the run: ``fit`` on the current model with the run's data and context, the stage's
        own seed (each stage shuffles and crops its own stream) and ``run`` (``fit_run``)."""
        ctx = self.context()
        ctx = replace(ctx, loader=replace(ctx.loader, seed=self.recipe.seed + index))
        return fit(self.model, self.data, settings, objective, context=ctx, run=run)

    def steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.recipe.data.batch_size
        return n // bs if n > bs else 1

    # -- models ------------------------------------------------------------------------------------------
    def new_model(self, cfg: ModelConfig, where: str = "model") -> tuple[nn.Module, ArchSpec]:
        d = self.data
        torch.manual_seed(self.recipe.seed)
        return make_model(cfg, d.num_classes, d.input_shape, where=where)

    def complete(self, index: int, kind: str) -> None:
        """Persist the model after a finished stage and the report so far (the resume point)."""
        if not self.run_dir or not self.writes:
            return
        save_checkpoint(
            self.stage_dir(index, kind),  # type: ignore[arg-type]
            self.model,
            self.spec,
            recipe=self.recipe.model_dump(mode="json"),
            stage=index,
        )
        self.report.save(self.run_dir)
        write_json(self.run_dir / "state.json", {"completed": index, "kind": kind})


def confined(root: Path, name: str, where: str) -> Path:
    """``root / name``, refusing absolute paths and paths that leave ``root`` (``..``, symlinks)."""
    p = Path(name)
    if not name or "\0" in name or p.is_absolute() or ".." in p.parts or not p.parts or name.endswith(("/", os.sep)):
        raise RecipeError(f"{where}: {name!r} must be a relative file path inside the run folder")
    if p.parts[0] in RESERVED:
        raise RecipeError(
            f"{where}: {name!r} would overwrite the run's own files; choose another name "
            f"(reserved: {', '.join(sorted(RESERVED))})"
        )
    out = root / p
    if not out.resolve().is_relative_to(root.resolve()):
        raise RecipeError(f"{where}: {name!r} resolves outside the run folder")
    if out.is_dir():
        raise RecipeError(f"{where}: {name!r} is a folder in the run folder; expected a file name")
    return out


def restore(state: RunState) -> int:
    """Load the last completed stage of ``state.run_dir``; returns the number of completed stages."""
    assert state.run_dir is not None
    done = read_state(state.run_dir, state.recipe)
    if done is None or done[0] == 0:
        return 0
    completed, kind = done
    state.model, state.spec, _ = load_checkpoint(state.stage_dir(completed, kind))  # type: ignore[arg-type]
    state.report = CompressionReport.load(state.run_dir)
    # killed between saving the report and state.json: the report may hold the stage being redone
    state.report.stages = [s for s in state.report.stages if s.index <= completed]
    if (state.run_dir / "teacher" / "model.json").exists():
        t, state.teacher_spec, _ = load_checkpoint(state.run_dir / "teacher")
        state.teacher = snapshot(t)
    return completed


def probe_shapes(model: nn.Module, data: DataBundle, name: str) -> None:
    """Fail early, in one line, when the data's inputs or classes do not fit the model."""
    x = data.train.x[:2]
    x = x.cpu() if isinstance(x, NamedInputs) else x.float()
    try:
        with torch.no_grad():
            out = call(copy.deepcopy(model).cpu().eval(), x)
    except RuntimeError as e:
        raise DataError(
            f"data inputs of shape {tuple(data.input_shape)} do not fit model '{name}': {str(e).splitlines()[0]}"
        ) from None
    if is_embedder(model):  # an embedder's width is not a class count
        return
    if data.num_classes == 0:
        raise DataError(
            f"the data has no labels, so no classes for model '{name}' to predict: train an embedding model "
            "on it (model.task: embedding, with an ssl objective or a teacher), or give labelled data"
        )
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise DataError(
            f"model '{name}' outputs {tuple(out.shape[1:])} per sample but the data has {data.num_classes} classes"
        )
