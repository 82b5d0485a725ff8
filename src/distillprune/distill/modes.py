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
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distillprune.distill.distiller import Distiller
from distillprune.distill.mutual import MutualDistiller


def check_distill_config(cfg: Any) -> None:
    """Cross-field rules of DistillConfig (raises ValueError, which pydantic reports with the location)."""
    if cfg.teachers is not None:
        if not cfg.teachers:
            raise ValueError("teachers: give at least one checkpoint folder (or auto)")
        if "teacher" in cfg.model_fields_set:
            raise ValueError("give either teacher or teachers, not both")
    if cfg.teacher_weights is not None:
        n = len(cfg.teachers or [cfg.teacher])
        if len(cfg.teacher_weights) != n:
            raise ValueError(f"teacher_weights has {len(cfg.teacher_weights)} weights for {n} teacher(s)")
        if any(w < 0 for w in cfg.teacher_weights) or sum(cfg.teacher_weights) <= 0:
            raise ValueError(f"teacher_weights must be >= 0 with a positive sum, got {cfg.teacher_weights}")
    if cfg.peer is not None and cfg.mode != "mutual":
        raise ValueError("peer is the second network of mode: mutual")
    if cfg.mode == "mutual":
        if cfg.cache:
            raise ValueError(
                "mode: mutual trains the teacher, so its outputs cannot be cached (cache: false)"
            )
        if cfg.teachers is not None:
            raise ValueError(
                "mode: mutual trains one peer network; teachers (a frozen ensemble) is for offline mode"
            )


def make_objective(
    cfg: Any, teacher: nn.Module | None, peer: nn.Module | None = None
) -> Distiller | MutualDistiller:
    """The objective of a DistillConfig, given its resolved teacher (an ensemble is one module).

    In mutual mode the peer is ``peer`` if given, else a trainable copy of ``teacher`` (the
    pipeline's stored teacher is never trained in place)."""
    specs = [s.spec() for s in cfg.losses]
    if cfg.mode == "mutual":
        if peer is None and teacher is None:
            raise ValueError("mode: mutual needs a peer network or a teacher to copy")
        return MutualDistiller.from_specs(peer if peer is not None else copy.deepcopy(teacher), specs)
    if teacher is None:
        raise ValueError("offline distillation needs a teacher")
    return Distiller.from_specs(teacher, specs, cache=cfg.cache, fold_teacher=cfg.fold_teacher,
                                compile_teacher=cfg.compile_teacher)


def reinitialised(model: nn.Module, seed: int, spec: Any = None) -> nn.Module:
    """A fresh copy of ``model``'s architecture: rebuilt from its spec (zoo init, pruning replayed)
    when it has one, else a deep copy with every layer's ``reset_parameters``."""
    torch.manual_seed(seed)
    if spec is not None and spec.name is not None:
        return spec.build()
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh
