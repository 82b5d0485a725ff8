"""Distillation modes of a recipe's ``distill`` block, as objectives the trainer runs.

- offline (default): a frozen teacher (``teacher: auto``, the unpruned self, or a checkpoint), or
  several (``teachers: [...]``, weighted mean logits: ``distill.ensemble``), optionally served
  from a cache of its outputs (``cache: true``: ``distill.cache``).
- mutual: Deep Mutual Learning, the teacher (or a fresh ``peer``) trains with the student
  (``distill.mutual``).
- born-again generations (``generations: N`` on a distill stage): the pipeline's distill runner
  repeats the stage, each generation's student becoming the next one's frozen teacher and the
  next student restarting from a fresh initialisation (``reinitialised``).
- label-free: any of the above on data without labels; losses that need labels fail before
  training (``check_labels``).
- self-supervised: no teacher and no labels, a stage's ``ssl`` block (``ssl.SSLObjective``: SimCLR, BYOL,
  masked LM); it takes the place of the ``distill`` block.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from distillprune.core.checkpoint import ArchSpec, load_checkpoint
from distillprune.data.base import DataBundle
from distillprune.distill.config import DistillConfig
from distillprune.distill.distiller import CrossEntropy, Distiller, freeze, snapshot
from distillprune.distill.ensemble import TeacherEnsemble
from distillprune.distill.mutual import MutualDistiller
from distillprune.errors import DistillpruneError
from distillprune.models.build import make_model
from distillprune.models.config import ModelConfig
from distillprune.ssl.config import SSLConfig
from distillprune.ssl.objective import SSLObjective

Objective = CrossEntropy | Distiller | MutualDistiller | SSLObjective


def resolve_teacher(
    cfg: DistillConfig,
    auto: Callable[[], nn.Module],
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """The frozen teacher of ``cfg``: ``auto`` (the caller's default, e.g. the dense model), a checkpoint
    folder, a model with its trained weights (built for ``num_classes`` and ``input_shape``), or the
    weighted ensemble of ``teachers``."""
    names = cfg.teachers or [cfg.teacher]
    members = [auto() if n == "auto" else snapshot(_teacher(n, num_classes, input_shape)) for n in names]
    if len(members) == 1 and cfg.teacher_weights is None:
        return members[0]
    return freeze(TeacherEnsemble(members, cfg.teacher_weights))


def _teacher(ref: str | ModelConfig, num_classes: int | None, input_shape: Sequence[int] | None) -> nn.Module:
    if isinstance(ref, str):
        return load_checkpoint(ref)[0]
    if ref.checkpoint is None and (num_classes is None or input_shape is None):
        raise DistillpruneError("a teacher given as a model needs num_classes and input_shape to be built")
    return make_model(ref, num_classes or 0, input_shape or (), where="distill.teacher")[0]


def objective_for(
    cfg: DistillConfig | None,
    label_smoothing: float,
    teacher: Callable[[], nn.Module],
    peer: nn.Module | None = None,
    ssl: SSLConfig | None = None,
    tokenizer: str | None = None,
) -> Objective:
    """The self-supervised objective of ``ssl`` when given (no teacher, no labels; ``tokenizer``: masked
    LM's), else cross-entropy when ``cfg`` is None, else the distillation objective of ``cfg``; ``teacher``
    is called only when the objective needs one."""
    if ssl is not None:
        return SSLObjective(ssl, tokenizer)
    if cfg is None:
        return CrossEntropy(label_smoothing)
    return make_objective(cfg, teacher() if peer is None else None, peer)


def build_peer(cfg: DistillConfig, seed: int, num_classes: int, input_shape: Sequence[int]) -> nn.Module | None:
    """Mutual mode's second network when ``cfg`` names one (``peer``; else the objective copies the teacher),
    built from ``seed + 7919``: not the student's seed, so identical twins stay identical."""
    if cfg.mode != "mutual" or cfg.peer is None:
        return None
    torch.manual_seed(seed + 7919)
    return make_model(cfg.peer, num_classes, input_shape, where="distill.peer")[0]


def teacher_of(
    cfg: DistillConfig | None, auto: Callable[[], nn.Module], seed: int, num_classes: int, input_shape: Sequence[int]
) -> nn.Module | None:
    """What a ``distill`` block teaches with: None without one; in mutual mode with a named ``peer``, that fresh
    network (a copy of it trains with the student); else its resolved teacher (``auto``: the caller's
    default)."""
    if cfg is None:
        return None
    peer = build_peer(cfg, seed, num_classes, input_shape)
    return peer if peer is not None else resolve_teacher(cfg, auto, num_classes, input_shape)


def finetune_objective(
    cfg: DistillConfig | None,
    label_smoothing: float,
    model: nn.Module,
    teacher: nn.Module | None,
    seed: int,
    data: DataBundle,
) -> Objective:
    """A verb's fine-tuning objective (its ``distill`` block; cross-entropy when it is null), built now: the
    teacher is ``teacher``, else the block's (``auto``: a frozen copy of ``model`` as it is before the verb
    changes it)."""
    if teacher is None:
        teacher = teacher_of(cfg, lambda: snapshot(model), seed, data.num_classes, data.input_shape)
    return objective_for(cfg, label_smoothing, lambda: teacher)  # type: ignore[arg-type,return-value]


def make_objective(
    cfg: DistillConfig, teacher: nn.Module | None, peer: nn.Module | None = None
) -> Distiller | MutualDistiller:
    """The objective of a DistillConfig, given its resolved teacher (an ensemble is one module).

    In mutual mode the peer is ``peer`` if given, else a trainable copy of ``teacher`` (the
    pipeline's stored teacher is never trained in place)."""
    specs = cfg.loss_specs()
    if cfg.mode == "mutual":
        if peer is None:
            if teacher is None:
                raise ValueError("mode: mutual needs a peer network or a teacher to copy")
            peer = copy.deepcopy(teacher)
        return MutualDistiller.from_specs(peer, specs)
    if teacher is None:
        raise ValueError("offline distillation needs a teacher")
    return Distiller.from_specs(
        teacher,
        specs,
        cache=cfg.cache,
        fold_teacher=cfg.fold_teacher,
        compile_teacher=cfg.compile_teacher,
        views=cfg.views,
    )


def reinitialised(model: nn.Module, seed: int, spec: ArchSpec | None = None) -> nn.Module:
    """A fresh copy of ``model``'s architecture: rebuilt from its spec (zoo init, pruning replayed)
    when it has one, else a deep copy with every layer's ``reset_parameters``."""
    torch.manual_seed(seed)
    if spec is not None and spec.name is not None:
        return spec.build()
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh
