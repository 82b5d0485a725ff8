"""Run a recipe: stages in order, a measurement after each, a checkpoint after each (resume point)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from distillprune.core.batch import NamedInputs
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.reporting import Deployed
from distillprune.data.base import DataBundle
from distillprune.data.sources import load_data
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import run_torch
from distillprune.measure.latency import seq_length
from distillprune.measure.metrics import measure_model
from distillprune.measure.quality import embedding_quality
from distillprune.pipeline.state import RunState, probe_shapes, restore
from distillprune.recipes.registry import STAGES
from distillprune.recipes.schema import Recipe
from distillprune.report.report import CompressionReport, StageResult, environment, write_markdown
from distillprune.train.logging import RunLogger
from distillprune.train.trainer import evaluate


def prepare_run_dir(run_dir: str | Path | None, resume: bool) -> Path | None:
    if run_dir is None:
        return None
    p = Path(run_dir)
    if resume:
        if not (p / "state.json").exists() and not (p / "stages").exists():
            raise DistillpruneError(f"--resume: no run to resume in {p}")
    elif p.exists() and any(p.iterdir()):
        raise DistillpruneError(f"run folder {p} already exists and is not empty; pass --resume to continue it "
                                "or choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def compress(recipe: Recipe, run_dir: str | Path | None = None, *, resume: bool = False,
             model: nn.Module | None = None, data: DataBundle | None = None, quiet: bool = False) -> CompressionReport:
    """Run every stage of ``recipe``; returns the report (also written to ``run_dir``).

    ``model``/``data`` override the recipe's (Python API: any nn.Module, any DataBundle).
    """
    return execute(recipe, run_dir, resume=resume, model=model, data=data, quiet=quiet).report


def execute(recipe: Recipe, run_dir: str | Path | None = None, *, resume: bool = False,
            model: nn.Module | None = None, data: DataBundle | None = None, quiet: bool = False) -> RunState:
    """``compress``, returning the final RunState (the compressed model is ``state.model``)."""
    console = Console(quiet=quiet)
    run_path = prepare_run_dir(run_dir, resume)
    torch.manual_seed(recipe.seed)
    data = data or load_data(recipe.data)
    env = {**environment(), "ort_threads": recipe.measure.threads}
    if isinstance(data.train.x, NamedInputs):  # text: each batch size is timed at a sequence length
        m = recipe.measure
        env["ort_seq_lengths"] = {f"bs{b}": seq_length(m, i) for i, b in enumerate(m.batch_sizes)}
    report = CompressionReport(recipe.name, env)
    state = RunState(recipe, data, nn.Identity(), ArchSpec(None, data.num_classes, list(data.input_shape)),
                     report, run_path, RunLogger(run_path, recipe.runtime.tensorboard), resume)
    if model is not None:
        state.model = model
    else:
        state.model, state.spec = state.new_model(recipe.model)
    probe_shapes(state.model, data, recipe.model.name if model is None else type(model).__name__)
    done = restore(state) if (resume and run_path) else 0
    try:
        for index, stage in enumerate(recipe.stages, start=1):
            if index <= done:
                continue
            t0 = time.perf_counter()
            definition = STAGES.get(stage.type)
            outcome = definition.run(stage, state, index)
            result = StageResult(index, f"{index}:{stage.type}", stage.type, 0.0, details=outcome.details)
            if definition.measured:
                _measure(state, result)
                if outcome.deployed is not None:
                    _stand_for(result, outcome.deployed)  # quantize/cluster rows measure the shipped file
            result.seconds = round(time.perf_counter() - t0, 2)
            state.report.add(result)
            state.complete(index, stage.type)
            console.print(f"[green]done[/] {result.name} in {result.seconds:.1f}s"
                          + (f"  top-1 {result.accuracy:.2f}%" if result.accuracy is not None else ""))
    finally:
        state.logger.close()
    if run_path:
        state.report.save(run_path)
        write_markdown(state.report, run_path)
    return state


def _measure(state: RunState, result: StageResult) -> None:
    model = state.model.eval()
    embedder = getattr(model, "output_kind", "logits") == "embedding"
    acc = evaluate(model, state.data, batch_size=state.recipe.data.eval_batch_size, runtime=state.recipe.runtime) \
        if state.data.test.y is not None and not embedder else None
    if embedder:  # the quality of an embedder is its agreement with the teacher's embeddings
        result.metrics = embedding_metrics(state, run_torch(model, state.data.inputs("test")))
    stats = measure_model(model.cpu(), state.data.input_shape, state.recipe.measure, accuracy=acc)
    result.accuracy = None if acc is None else round(acc, 2)
    result.params, result.nonzero_params, result.macs = stats.params, stats.nonzero_params, stats.macs
    result.onnx_bytes = stats.onnx_bytes
    result.latency_ms = {k: round(v, 4) for k, v in stats.latency_ms.items()}


def _stand_for(result: StageResult, dep: Deployed) -> None:
    """Let the stage's deployed artefact stand for the stage in its report row; the float model's numbers
    are kept in ``result.float_model``."""
    result.float_model = {"accuracy": result.accuracy, "onnx_bytes": result.onnx_bytes,
                          "latency_ms": dict(result.latency_ms)}
    result.artefact = dep.artefact
    if dep.bytes is not None:
        result.onnx_bytes = dep.bytes
    if dep.latency_ms is not None:
        result.latency_ms = dep.latency_ms
    if dep.accuracy is not None:
        result.accuracy = round(dep.accuracy, 2)
    if dep.metrics is not None:
        result.float_model["metrics"] = dict(result.metrics)
        result.metrics = dep.metrics


def embedding_metrics(state: RunState, outputs: np.ndarray) -> dict[str, float]:
    """Cosine and top-10 retrieval overlap of an embedder's test outputs against the teacher's."""
    teacher = run_torch(state.ensure_teacher(), state.data.inputs("test"))
    return embedding_quality(outputs, teacher)
