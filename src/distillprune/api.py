"""Python API verbs over the pipeline pieces: prune_, distill, compress."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillprune.core.checkpoint import ArchSpec
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import Distiller
from distillprune.prune.config import PruneConfig
from distillprune.prune.depth import choose_blocks
from distillprune.prune.structured import prune_step, width_pruner
from distillprune.prune.unstructured import MagnitudeMasks
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
from distillprune.train.trainer import FitSettings, fit


def prune_(model: nn.Module, cfg: PruneConfig | dict, example_inputs: torch.Tensor, num_classes: int,
           teacher: nn.Module | None = None, spec: ArchSpec | None = None) -> dict[str, Any]:
    """One-shot pruning in place (depth, then width, or unstructured); returns what was removed.

    ``spec`` (if given) receives the replayable history, so ``save_checkpoint`` can rebuild the model.
    """
    cfg = cfg if isinstance(cfg, PruneConfig) else PruneConfig.model_validate(cfg)
    out: dict[str, Any] = {}
    history = spec.history if spec is not None else []
    model.eval()
    if cfg.depth:
        ref = teacher if teacher is not None else __import__("copy").deepcopy(model)
        chosen = choose_blocks(model, ref, [example_inputs], cfg.depth.blocks)
        history += [{"op": "remove_block", "path": p} for p in chosen]
        out["removed_blocks"] = chosen
    if cfg.width:
        if cfg.width.importance == "taylor":
            raise ValueError("taylor importance needs gradients: use a prune stage of a recipe")
        pruner = width_pruner(model, example_inputs[:1], cfg.width, num_classes)
        history.append({"op": "channels", "entries": prune_step(pruner)})
    if cfg.unstructured:
        masks = MagnitudeMasks(model, cfg.unstructured.scope)
        masks.update(cfg.unstructured.sparsity)
        out["sparsity"] = masks.sparsity()
        history.append({"op": "sparsity", "value": out["sparsity"]})
    out["history"] = history
    return out


def distill(student: nn.Module, teacher: nn.Module | list[nn.Module], data: DataBundle, epochs: int = 10,
            losses: list[dict] | None = None, lr: float = 0.05, batch_size: int = 64,
            runtime: RuntimeConfig | None = None, seed: int = 0, cache: bool = False) -> list[dict]:
    """Distil ``teacher`` (or the mean logits of a list of teachers) into ``student`` in place (Hinton KD
    by default); ``cache``: compute the teacher's outputs once. Returns per-epoch records."""
    if isinstance(teacher, (list, tuple)):
        from distillprune.distill.ensemble import TeacherEnsemble

        teacher = TeacherEnsemble(teacher)
    objective = Distiller.from_specs(teacher, losses or [{"name": "kd"}], cache=cache)
    settings = FitSettings(epochs, OptimizerConfig(lr=lr), ScheduleConfig())
    return fit(student, data, settings, objective, runtime=runtime or RuntimeConfig(progress=False),
               seed=seed, batch_size=batch_size)
