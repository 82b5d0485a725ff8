"""Run a recipe: stages in order, a measurement after each, a checkpoint after each (resume point)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from distillprune.core.checkpoint import ArchSpec
from distillprune.data.base import DataBundle
from distillprune.data.sources import load_data
from distillprune.errors import DistillpruneError
from distillprune.measure.metrics import layer_widths, measure_model
from distillprune.pipeline.compression_stages import apply_deployed
from distillprune.pipeline.stages import RUNNERS, new_model
from distillprune.pipeline.state import RunState, probe_shapes, restore
from distillprune.recipes.schema import Recipe
from distillprune.report.report import CompressionReport, StageResult, environment, write_markdown
from distillprune.train.logging import RunLogger
from distillprune.train.trainer import evaluate

MEASURED = {"train", "distill", "prune", "finetune", "evaluate", "quantize", "lowrank", "cluster"}


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
    report = CompressionReport(recipe.name, env)
    state = RunState(recipe, data, nn.Identity(), ArchSpec(None, data.num_classes, list(data.input_shape)),
                     report, run_path, RunLogger(run_path, recipe.runtime.tensorboard), resume)
    if model is not None:
        state.model = model
    else:
        state.model, state.spec = new_model(recipe.model, state)
    probe_shapes(state.model, data, recipe.model.name if model is None else type(model).__name__)
    done = restore(state) if (resume and run_path) else 0
    try:
        for index, stage in enumerate(recipe.stages, start=1):
            if index <= done:
                continue
            t0 = time.perf_counter()
            details = RUNNERS.get(stage.type)(stage, state, index)
            result = StageResult(index, f"{index}:{stage.type}", stage.type, 0.0, details=details)
            if stage.type in MEASURED:
                _measure(state, result)
                apply_deployed(result)  # quantize/cluster rows measure the shipped file
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
        _write_html(state.report, run_path, console)
    return state


def _write_html(report: CompressionReport, run_path: Path, console: Console) -> None:
    """report.html is a view of report.json (already saved): a rendering failure must not fail the run."""
    from distillprune.report.html import write_html

    try:
        write_html(report, run_path)
    except Exception as e:  # noqa: BLE001 - any plotting error; the data is safe and re-renderable
        console.print(f"[yellow]warning[/] report.html not written ({type(e).__name__}: {e}); "
                      f"render it later with: distillprune report {run_path} --html")


def _measure(state: RunState, result: StageResult) -> None:
    model = state.model.eval()
    acc = evaluate(model, state.data, batch_size=state.recipe.data.eval_batch_size, runtime=state.recipe.runtime) \
        if state.data.test.y is not None else None
    stats = measure_model(model.cpu(), state.data.input_shape, state.recipe.measure, accuracy=acc)
    result.accuracy = None if acc is None else round(acc, 2)
    result.params, result.nonzero_params, result.macs = stats.params, stats.nonzero_params, stats.macs
    result.onnx_bytes = stats.onnx_bytes
    result.latency_ms = {k: round(v, 4) for k, v in stats.latency_ms.items()}
    result.widths = layer_widths(model)
