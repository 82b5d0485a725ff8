"""One runner per stage type, registered by the stage's ``type``. Each mutates the RunState and
returns the stage's details for the report; measurement happens around it (pipeline.run)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from distillprune.auto.search import search
from distillprune.core.checkpoint import ArchSpec, load_checkpoint
from distillprune.core.registry import Registry
from distillprune.distill.distiller import CrossEntropy, freeze, snapshot
from distillprune.distill.ensemble import TeacherEnsemble
from distillprune.distill.losses.kd import soft_kl
from distillprune.distill.modes import make_objective, reinitialised
from distillprune.distill.mutual import MutualDistiller
from distillprune.export.onnx import export_onnx, parity
from distillprune.models import build_model
from distillprune.pipeline.state import RunState
from distillprune.prune.config import DepthConfig
from distillprune.prune.depth import choose_blocks
from distillprune.prune.importance import NEEDS_GRADIENTS
from distillprune.prune.structured import accumulate_gradients, classifier_layers, prune_step, width_pruner
from distillprune.prune.unstructured import MagnitudeMasks, cubic_sparsity
from distillprune.recipes.schema import (
    DistillConfig,
    DistillStage,
    ExportStage,
    FinetuneStage,
    ModelConfig,
    PruneStage,
    TrainingOptions,
    TrainStage,
)
from distillprune.train.trainer import FitSettings, evaluate, fit, resolve_device

Runner = Callable[[Any, RunState, int], dict]
RUNNERS: Registry[Runner] = Registry("stage")


def _train(state: RunState, opts: TrainingOptions, epochs: int, objective, index: int, tag: str,
           sub: str = "train", on_step=None) -> list[dict]:
    r, d = state.recipe, state.recipe.data
    ckpt = state.stage_dir(index, tag)
    return fit(state.model, state.data, FitSettings(epochs, opts.optimizer, opts.schedule, opts.grad_clip),
               objective, runtime=r.runtime, seed=r.seed + index, batch_size=d.batch_size,
               crop_padding=d.augment.crop_padding, hflip=d.augment.hflip,
               ckpt_dir=ckpt / sub if ckpt else None, resume=state.resume, logger=state.logger,
               on_step=on_step, desc=f"{index}:{tag}" + (f"/{sub}" if sub != "train" else ""))


def _summary(history: list[dict]) -> dict:
    if not history:
        return {}
    last = history[-1]
    ips = [h["images_per_s"] for h in history]
    return {"epochs": len(history), "final_loss": round(last["loss"], 4),
            "train_images_per_s": round(sum(ips) / len(ips), 1),
            "train_seconds": round(sum(h["seconds"] for h in history), 2)}


def resolve_teacher(state: RunState, cfg: DistillConfig) -> torch.nn.Module:
    """The frozen teacher: auto (the dense model), a checkpoint, or the weighted ensemble of ``teachers``."""
    names = cfg.teachers or [cfg.teacher]
    members = [state.ensure_teacher() if n == "auto" else snapshot(load_checkpoint(n)[0]) for n in names]
    if len(members) == 1 and cfg.teacher_weights is None:
        return members[0]
    return freeze(TeacherEnsemble(members, cfg.teacher_weights))


def _peer(state: RunState, cfg: DistillConfig) -> torch.nn.Module | None:
    if cfg.mode != "mutual" or cfg.peer is None:
        return None
    if cfg.peer.checkpoint:
        return load_checkpoint(cfg.peer.checkpoint)[0]
    torch.manual_seed(state.recipe.seed + 7919)  # not the student's seed: identical twins stay identical
    d = state.data
    return build_model(cfg.peer.name, d.num_classes, d.input_shape, **cfg.peer.kwargs)


def objective_for(state: RunState, cfg: DistillConfig | None, label_smoothing: float,
                  teacher: torch.nn.Module | None = None):
    if cfg is None:
        return CrossEntropy(label_smoothing)
    peer = _peer(state, cfg)
    if teacher is None and peer is None:
        teacher = resolve_teacher(state, cfg)
    return make_objective(cfg, teacher, peer)


@RUNNERS.register("train")
def run_train(st: TrainStage, state: RunState, index: int) -> dict:
    hist = _train(state, st, st.epochs, CrossEntropy(st.label_smoothing), index, "train")
    state.set_teacher(state.model, state.spec)  # the trained dense model is the default teacher
    return _summary(hist)


@RUNNERS.register("distill")
def run_distill(st: DistillStage, state: RunState, index: int) -> dict:
    """Distil; with ``generations`` > 1 (born-again), each generation's student teaches the next one."""
    details: dict[str, Any] = {"losses": [s.name for s in st.distill.losses], "mode": st.distill.mode}
    teacher, hist, gens = None, [], []
    for g in range(1, st.generations + 1):
        objective = objective_for(state, st.distill, st.label_smoothing, teacher=teacher)
        if g == 1 and st.student is not None:
            state.model, state.spec = new_model(st.student, state)
        elif g > 1:
            state.model = reinitialised(state.model, state.recipe.seed + g, state.spec)
        h = _train(state, st, st.epochs, objective, index, "distill", sub="train" if g == 1 else f"gen{g}")
        hist += h
        gens.append({"generation": g, "top1": round(h[-1]["test_acc"], 2) if h else None})
        teacher = snapshot(state.model)
    details.update(_summary(hist))
    if st.generations > 1:
        details["generations"] = gens
    if isinstance(objective, MutualDistiller) and state.data.test.y is not None:
        details["peer_top1"] = round(evaluate(objective.peer, state.data, runtime=state.recipe.runtime), 2)
    if getattr(objective, "cache", None) is not None:
        details["teacher_cache_seconds"] = round(objective.cache.seconds, 2)
    return details


@RUNNERS.register("finetune")
def run_finetune(st: FinetuneStage, state: RunState, index: int) -> dict:
    objective = objective_for(state, st.distill, st.label_smoothing)
    return {"kd": st.distill is not None, **_summary(_train(state, st, st.epochs, objective, index, "finetune"))}


def new_model(cfg: ModelConfig, state: RunState) -> tuple[torch.nn.Module, ArchSpec]:
    if cfg.checkpoint:
        model, spec, _ = load_checkpoint(cfg.checkpoint)
        return model, spec
    d = state.data
    torch.manual_seed(state.recipe.seed)
    model = build_model(cfg.name, d.num_classes, d.input_shape, **cfg.kwargs)
    return model, ArchSpec(cfg.name, d.num_classes, list(d.input_shape), dict(cfg.kwargs))


def _calib(state: RunState, n: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    from distillprune.data.base import TensorLoader

    d = state.data
    device = resolve_device(state.recipe.runtime)
    loader = TensorLoader(d.train, state.recipe.data.batch_size, d.mean, d.std, shuffle=True,
                          seed=state.recipe.seed + 1, device=device)
    return [b for _, b in zip(range(n), loader, strict=False)]


@RUNNERS.register("prune")
def run_prune(st: PruneStage, state: RunState, index: int) -> dict:
    """Prune a little, distil a little, ``steps`` times; KD from the dense teacher throughout."""
    device = resolve_device(state.recipe.runtime)
    model = state.model.to(device).eval()
    teacher = resolve_teacher(state, st.distill) if st.distill else snapshot(model)
    teacher.to(device)
    objective = objective_for(state, st.distill, st.label_smoothing)
    example = torch.zeros(1, *state.data.input_shape, device=device)
    details: dict[str, Any] = {}
    width, depth = st.width, st.depth
    dense = snapshot(model) if st.target is not None else None  # the reference of the target
    if st.target is not None:
        plan = search(model, state.data.input_shape, state.data.num_classes, st.width, st.target,
                      state.recipe.measure)
        details["plan"] = plan.to_dict()
        depth = DepthConfig(blocks=plan.blocks) if plan.blocks else None
        width = st.width.model_copy(update={"ratio": plan.width_ratio}) if plan.width_ratio > 0 else None
    pruner, masks, hist = None, None, []
    for k in range(st.steps):
        if k == 0 and depth:
            batches = [x for x, _ in _calib(state, depth.calib_batches)]
            chosen = choose_blocks(model, teacher, batches, depth.blocks)
            state.spec.history += [{"op": "remove_block", "path": p} for p in chosen]
            details["removed_blocks"] = chosen
            if st.target is not None:  # the search assumed other blocks: re-fit the width to the real ones
                plan = search(model, state.data.input_shape, state.data.num_classes, st.width,
                              st.target.model_copy(update={"depth_fractions": [0.0]}), state.recipe.measure,
                              baseline=dense)
                details["plan"] = {**details["plan"], "width_ratio": plan.width_ratio,
                                   "macs_ratio": plan.macs_ratio, "speedup": plan.speedup}
                width = st.width.model_copy(update={"ratio": plan.width_ratio}) if plan.width_ratio > 0 else None
        if width:
            if pruner is None:
                pruner = width_pruner(model, example, width, state.data.num_classes, st.steps)
            if width.importance in NEEDS_GRADIENTS:
                accumulate_gradients(model, _calib(state, width.taylor_batches), _taylor_loss(teacher))
            state.spec.history.append({"op": "channels", "entries": prune_step(pruner)})
            model.zero_grad(set_to_none=True)
        if st.unstructured:
            if masks is None:
                masks = MagnitudeMasks(model, st.unstructured.scope, classifier_layers(model, state.data.num_classes))
            final = st.unstructured.sparsity
            masks.update(final if st.unstructured.schedule == "oneshot" else cubic_sparsity(k + 1, st.steps, final))
        if st.epochs_per_step:
            hist += _train(state, st, st.epochs_per_step, objective, index, "prune", sub=f"step{k + 1}",
                           on_step=masks.apply if masks else None)
    if masks is not None:
        masks.apply()
        details["sparsity"] = round(masks.sparsity(), 4)
        state.spec.history.append({"op": "sparsity", "value": details["sparsity"]})
    return {**details, "steps": st.steps, **_summary(hist)}


def _taylor_loss(teacher: torch.nn.Module):
    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        s = model(x)
        kd = soft_kl(s, t, 1.0)
        return kd if y is None else kd + torch.nn.functional.cross_entropy(s, y)

    return loss


@RUNNERS.register("evaluate")
def run_evaluate(st: Any, state: RunState, index: int) -> dict:
    return {}


@RUNNERS.register("export")
def run_export(st: ExportStage, state: RunState, index: int) -> dict:
    from distillprune.errors import DistillpruneError

    if state.run_dir is None:
        return {}
    path = export_onnx(state.model, state.data.input_shape, state.run_dir / st.filename)
    d = state.data
    x = (d.test.x[:64].float() / (255.0 if d.test.x.dtype == torch.uint8 else 1.0))
    shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
    x = (x - d.mean.view(shape)) / d.std.view(shape)
    par = parity(state.model, path, x)
    if par["max_abs_diff"] > st.max_abs_diff:
        raise DistillpruneError(f"ONNX parity failed: max abs diff {par['max_abs_diff']:.2e} > {st.max_abs_diff}")
    return {"onnx": str(path.name), **{k: float(f"{v:.3g}") for k, v in par.items()}}


# quantize, lowrank, cluster: registered by their own module (it imports this one)
from distillprune.pipeline import compression_stages  # noqa: E402,F401
