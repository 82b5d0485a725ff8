"""Run a recipe: stages in order, a measurement after each, a checkpoint after each (resume point).

Under torchrun every rank runs this loop: stages that change the model run on every rank (training is
data-parallel, pruning decisions come from rank 0), stages that only read it (export, evaluate,
post-training quantization) and the measurements run on rank 0 while the others wait; rank 0 alone
writes the run folder, and after each stage the ranks check that they hold the same architecture.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console
from torch import nn

from distillprune.core.batch import NamedInputs, is_embedder
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.progress import phase, talking
from distillprune.core.reporting import Deployed
from distillprune.core.trust import code_trust
from distillprune.data.base import DataBundle
from distillprune.data.checks import check_bundle
from distillprune.data.sources import load_data
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes, run_torch
from distillprune.measure.latency import seq_length, torch_latency
from distillprune.measure.metrics import count_macs, count_params, layer_widths
from distillprune.measure.quality import embedding_quality
from distillprune.models.config import ModelConfig
from distillprune.models.user import vouched_code
from distillprune.pipeline import rundir, runlock
from distillprune.pipeline.preflight import check_not_inputs, preflight
from distillprune.pipeline.probe import load_probe
from distillprune.pipeline.state import RunState, probe_shapes, restore
from distillprune.pipeline.timing import StageTimer, architecture_key
from distillprune.recipes.registry import STAGES, StageOutcome
from distillprune.recipes.schema import Recipe, StageConfig
from distillprune.report.render import write_markdown
from distillprune.report.report import CompressionReport, StageResult, environment
from distillprune.train import distributed as ddp
from distillprune.train.device import resolve_device
from distillprune.train.logging import RunLogger, attach_run_log
from distillprune.train.trainer import evaluate


def prepare_run_dir(
    run_dir: str | Path | None, resume: bool, recipe: Recipe | None = None, force: bool = False
) -> Path | None:
    """Check, create and lock the run folder before any work (rules in ``pipeline.rundir``); a folder that is
    or holds one of the recipe's inputs is refused first."""
    if run_dir is not None and recipe is not None:
        check_not_inputs(rundir.out_folder(run_dir), recipe)
    return rundir.prepare(run_dir, resume, recipe, force)


def compress(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    data: DataBundle | None = None,
    quiet: bool = False,
    force: bool = False,
    trust_code: bool = False,
) -> CompressionReport:
    """Run every stage of ``recipe``; returns the report (also written to ``run_dir``).

    ``model``/``data`` override the recipe's (Python API: any nn.Module, any DataBundle). ``force``: write
    into a non-empty ``run_dir`` that is not a distillprune run folder. ``trust_code`` lets checkpoints the
    recipe names (``model.checkpoint``, a teacher folder) import the class file they carry (see
    ``core.trust``); the recipe's own ``model.python`` classes need no opt-in.
    """
    return execute(
        recipe, run_dir, resume=resume, model=model, data=data, quiet=quiet, force=force, trust_code=trust_code
    ).report


def execute(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    data: DataBundle | None = None,
    quiet: bool = False,
    force: bool = False,
    trust_code: bool = False,
) -> RunState:
    """``compress``, returning the final RunState (the compressed model is ``state.model``)."""
    # the recipe's own classes are the user's choice: their checkpoints in the run folder reload (--resume)
    with code_trust(trust_code, vouched=recipe_code(recipe)):
        with ddp.process_group(resolve_device(recipe.runtime)):  # torchrun's group (NCCL/gloo), else nothing
            try:
                return _execute(recipe, run_dir, resume=resume, model=model, data=data, quiet=quiet, force=force)
            finally:
                runlock.release_all()


def recipe_code(recipe: Recipe) -> dict[str, str]:
    """sha256 -> place (file or module) of every class the recipe itself names (``model.python`` of the model,
    students and teachers): the code a run vouches for when it reloads its own checkpoints."""
    found: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, ModelConfig) and node.python:
            code = vouched_code(node.python)
            found.update([code] if code else [])
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(recipe)
    return found


def _execute(
    recipe: Recipe,
    run_dir: str | Path | None,
    *,
    resume: bool,
    model: nn.Module | None,
    data: DataBundle | None,
    quiet: bool,
    force: bool,
) -> RunState:
    console = Console(quiet=quiet or not ddp.is_rank0())
    # rank 0 names and creates the folder (a default name holds the time: ranks could disagree)
    run_dir = ddp.broadcast_json(None if run_dir is None else str(run_dir))
    run_path = ddp.once(
        lambda: prepare_run_dir(run_dir, resume, recipe, force),
        encode=lambda p: p and str(p),
        decode=lambda p: p and Path(p),
    )
    state = _new_state(recipe, run_path, resume, model, data)
    state.timer = timer = StageTimer(recipe.measure, tuple(state.data.input_shape), run_path)
    done = restore(state) if (resume and run_path) else 0
    if done and state.report.baseline is not None:
        timer.restore(state.report.baseline.name)
    detach = attach_run_log(run_path) if ddp.is_rank0() else (lambda: None)
    ddp.barrier()  # every rank has read the run folder before rank 0 writes to it again
    # the long phases of each stage (scoring, planning, the cut, recovery, evaluation, export, timing) say
    # how they go on rank 0, as training does (core.progress)
    talk = recipe.runtime.progress and ddp.is_rank0() and not quiet
    try:
        if done == 0 and not recipe.stages[0].measures_input:
            with talking("0:input", enabled=talk):
                _measure_input(state, console)
        for index, stage in enumerate(recipe.stages, start=1):
            if index > done:
                with talking(f"{index}:{stage.type}", enabled=talk):
                    _run_stage(state, index, stage, console)
    finally:
        state.logger.close()
        detach()
    if run_path and ddp.is_rank0():
        state.report.save(run_path)
        write_markdown(state.report, run_path)
        _write_html(state.report, run_path, console)
    return state


def _new_state(
    recipe: Recipe, run_path: Path | None, resume: bool, model: nn.Module | None, data: DataBundle | None
) -> RunState:
    """The run's state before its first stage: the data loaded (or checked), the recipe checked against it, the
    model built (or the one passed), the report's environment and the probe."""
    torch.manual_seed(recipe.seed)
    if data is None:
        data = load_data(recipe.data)
    else:
        check_bundle(data, "data")
    preflight(recipe, data, base_model=model is None)
    env = {**environment(), "ort_threads": recipe.measure.threads}
    if isinstance(data.train.x, NamedInputs):  # text: each batch size is timed at a sequence length
        m = recipe.measure
        env["ort_seq_lengths"] = {f"bs{b}": seq_length(m, i) for i, b in enumerate(m.batch_sizes)}
    report = CompressionReport(recipe.name, env)
    state = RunState(
        recipe,
        data,
        nn.Identity(),
        ArchSpec(None, data.num_classes, list(data.input_shape)),
        report,
        run_path,
        RunLogger(run_path, recipe.runtime.tensorboard),
        resume,
    )
    if model is not None:
        state.model = model
    else:
        state.model, state.spec = state.new_model(recipe.model)
    probe_shapes(state.model, data, recipe.model.name if model is None else type(model).__name__)
    if ddp.is_rank0():  # the rank that measures
        state.probe = load_probe(recipe.probe, recipe.data, data)
    return state


def _run_stage(state: RunState, index: int, stage: StageConfig, console: Console) -> None:
    """Run stage ``index`` (1-based) and measure the model it leaves; its row joins the report."""
    t0 = time.perf_counter()
    definition = STAGES.get(stage.type)
    every_rank = stage.changes_model()  # else rank 0 alone: export, evaluate, post-training quantization
    try:
        outcome = definition.run(stage, state, index) if every_rank or ddp.is_rank0() else StageOutcome()
    except DistillpruneError as e:  # say which stage: names in a message may be the stage's
        if not str(e).startswith("stages."):
            e.args = (f"stages.{index - 1} ({stage.type}): {e}", *e.args[1:])
        raise
    result = StageResult(index, f"{index}:{stage.type}", stage.type, 0.0, details=outcome.details)
    result.flags += outcome.flags
    note = getattr(getattr(outcome.details, "training", None), "note", None)
    if note:  # a fine-tune that never beat its start: said, not only in report.json
        result.flags.append(f"fine-tune: {note}")
    if definition.measured and ddp.is_rank0():  # measured alone: other ranks would skew the latency
        _measure(state, result)
        if outcome.deployed is not None:
            _stand_for(result, outcome.deployed)  # quantize/cluster rows measure the shipped file
    result.seconds = round(time.perf_counter() - t0, 2)
    state.report.add(result)
    state.complete(index, stage.type)
    ddp.barrier()
    ddp.check_same_architecture(state.model, state.spec.history, f"after stage {result.name}")
    console.print(
        f"[green]done[/] {result.name} in {result.seconds:.1f}s"
        + (f"  top-1 {result.accuracy:.2f}%" if result.accuracy is not None else "")
    )


def _measure_input(state: RunState, console: Console) -> None:
    """Row 0: the model as it enters the run (a user's trained model), the dense baseline of every speedup."""
    result = StageResult(0, "0:input", "input", 0.0)
    t0 = time.perf_counter()
    _measure(state, result)
    result.seconds = round(time.perf_counter() - t0, 2)
    state.report.add(result)
    console.print(
        f"[green]measured[/] {result.name}" + (f"  top-1 {result.accuracy:.2f}%" if result.accuracy is not None else "")
    )


def _write_html(report: CompressionReport, run_path: Path, console: Console) -> None:
    """report.html is a view of report.json (already saved): a rendering failure must not fail the run."""
    from distillprune.report.html import write_html

    try:
        write_html(report, run_path)
    except Exception as e:  # noqa: BLE001 - any plotting error; the data is safe and re-renderable
        console.print(
            f"[yellow]warning[/] report.html not written ({type(e).__name__}: {e}); "
            f"render it later with: distillprune report {run_path} --html"
        )


def _measure(state: RunState, result: StageResult) -> None:
    """Accuracy, params, MACs, ONNX size and latency (back to back with the dense model) of the current model."""
    model = state.model.eval()
    embedder = is_embedder(model)
    with phase(f"evaluating on {len(state.data.test)} test samples"):
        acc = (
            evaluate(model, state.data, batch_size=state.recipe.data.eval_batch_size, runtime=state.recipe.runtime)
            if state.data.test.y is not None and not embedder
            else None
        )
        if embedder:  # the quality of an embedder is its agreement with the teacher's embeddings
            result.metrics = embedding_metrics(state, run_torch(model, state.data.inputs("test")))
        if state.probe is not None:  # ... and how well its features classify with a few labels (kNN, linear)
            result.metrics.update(state.probe.scores(lambda x: run_torch(model, x)))
    cpu, shape = model.cpu(), tuple(state.data.input_shape)
    with phase("exporting ONNX (to measure it)"):
        blob = onnx_bytes(cpu, shape)
    result.accuracy = None if acc is None else round(acc, 2)
    result.params, result.nonzero_params = count_params(cpu), count_params(cpu, nonzero=True)
    result.macs, result.onnx_bytes = count_macs(cpu, shape), len(blob)
    timer = state.timer
    assert timer is not None  # set by the runner before any stage is measured
    timing = timer.time(blob, result.name, architecture_key(cpu))
    result.latency_ms, result.speedups, result.latency_spread = timing.latency_ms, timing.speedups, timing.spread
    result.timing, result.load = timing.how or None, timing.load
    m = state.recipe.measure
    if m.enabled and torch.cuda.is_available():
        for mode in ("eager", "graph"):
            result.latency_ms[f"gpu_{mode}_bs{m.gpu_batch_size}"] = round(
                torch_latency(copy.deepcopy(cpu), shape, m.gpu_batch_size, cfg=m, mode=mode), 4
            )
    base = state.report.baseline
    mac_ratio = base.macs / result.macs if base is not None and base.macs and result.macs else None
    result.flags += timer.flags(timing, mac_ratio)
    result.widths = layer_widths(cpu)


def _stand_for(result: StageResult, dep: Deployed) -> None:
    """Let the stage's deployed artefact stand for the stage in its report row; the float model's numbers
    are kept in ``result.float_model``."""
    result.float_model = {
        "accuracy": result.accuracy,
        "onnx_bytes": result.onnx_bytes,
        "latency_ms": dict(result.latency_ms),
    }
    result.artefact = dep.artefact
    if dep.bytes is not None:
        result.onnx_bytes = dep.bytes
    if dep.latency_ms is not None:
        result.latency_ms, result.speedups, result.latency_spread = dep.latency_ms, dep.speedups, dep.spread
        result.timing = "the deployed file, paired with the dense model" if dep.speedups else None
        result.load = dep.load
    if dep.accuracy is not None:
        result.accuracy = round(dep.accuracy, 2)
    if dep.metrics is not None:
        result.float_model["metrics"] = dict(result.metrics)
        result.metrics = dep.metrics


def embedding_metrics(state: RunState, outputs: np.ndarray) -> dict[str, float]:
    """Cosine and top-10 retrieval overlap of an embedder's test outputs against the teacher's."""
    teacher = run_torch(state.ensure_teacher(), state.data.inputs("test"))
    return embedding_quality(outputs, teacher)
