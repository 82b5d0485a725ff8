"""``quantize``: an int8 (static / dynamic / QAT) or fp16 / bf16 ONNX file; the stage's row measures it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from distillprune.core.batch import is_embedder
from distillprune.core.io import atomic_write
from distillprune.core.progress import phase
from distillprune.core.reporting import Deployed
from distillprune.export.onnx import onnx_accuracy, run_onnx
from distillprune.pipeline.run import embedding_metrics
from distillprune.pipeline.state import RunState
from distillprune.quant import QATOptions, QuantConfig, default_filename, quantize, scheme_config
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train import distributed as ddp

HALF = ("fp16", "bf16")


class QuantizeStage(StageConfig, QuantConfig):
    """`static` int8 through ONNX Runtime (QDQ, per-channel weights, calibration `minmax`/`percentile`/`entropy`
    on the recipe's data), `dynamic` int8, `qat` (fake-quant training with KD, exported to the same
    QDQ form), `fp16`/`bf16` ONNX; every file is checked against the float model (top-1 agreement >=
    `min_agreement`) and timed; the stage's row measures that file."""

    example: ClassVar[dict[str, Any]] = {"method": "dynamic", "min_agreement": 0.0}

    type: Literal["quantize"]
    filename: str | None = Field(None, description="default: model.<method>.onnx in the run folder")
    qat: QATOptions | None = Field(None, description="method: qat only: epochs, optimizer, distill")

    @model_validator(mode="after")
    def _qat(self) -> QuantizeStage:
        if self.method == "qat" and self.qat is None:
            self.qat = QATOptions()
        elif self.method != "qat" and self.qat is not None:
            raise ValueError(f"qat options given but method is {self.method!r}; set method: qat or drop qat")
        return self

    def output_file(self) -> str | None:
        return self.filename if self.filename is not None else default_filename(self.method)

    def changes_model(self) -> bool:
        return self.method == "qat"  # QAT trains (on every rank under torchrun); PTQ only reads the model


@register_stage(QuantizeStage)
def run_quantize(st: QuantizeStage, state: RunState, index: int) -> StageOutcome:
    """The verb on the run's model (QAT: its teacher and checkpointing trainer); then the file is timed,
    its accuracy measured, and it is moved into the run folder."""
    cfg = scheme_config(st)
    name = st.filename or default_filename(st.method)
    opts = getattr(cfg, "qat", None)
    teacher = state.teacher_for(opts.distill) if opts is not None else None
    trainer = state.trainer(opts, index, "quantize") if opts is not None else None
    with tempfile.TemporaryDirectory(prefix="dp-quantize-") as tmp:
        workdir = (state.stage_dir(index, "quantize") if state.writes else None) or Path(tmp)
        final = state.output_path(name, f"stages.{index - 1}.filename")
        out = Path(tmp) / Path(name).name  # moved into the run folder once it has passed its checks
        res = phase(f"quantizing ({st.method})")(quantize)(
            state.model,
            cfg,
            state.data,
            teacher=teacher,
            trainer=trainer,
            context=state.context(),
            out=out,
            workdir=workdir,
        )
        # fp16/bf16 target GPUs: ORT CPU timings mislead; under torchrun rank 0 times alone
        measure_cpu = state.recipe.measure.enabled and cfg.method not in HALF and ddp.is_rank0()
        timing = state.timer.time(out.read_bytes(), f"{index}:quantize") if measure_cpu and state.timer else None
        on_ort = res.details.get("runner", "onnxruntime") == "onnxruntime"
        embedder = is_embedder(state.model)
        labels = None if embedder else state.data.labels("test")
        acc = (
            phase(f"evaluating {name}")(onnx_accuracy)(out, state.data.inputs("test"), labels)
            if on_ort
            else res.accuracy
        )
        metrics = embedding_metrics(state, run_onnx(out, state.data.inputs("test"))) if embedder and on_ort else None
        if state.probe is not None and on_ort:  # the deployed file's features, probed like every row
            metrics = {**(metrics or {}), **state.probe.scores(lambda x: run_onnx(out, x))}
        if final is not None:
            atomic_write(final, lambda t: shutil.copyfile(out, t))
    if cfg.method in HALF:
        res.details["latency"] = "not measured on CPU (half precision targets GPUs)"
    res.path = name
    deployed = Deployed(
        name,
        res.bytes,
        timing.latency_ms if timing else {},
        acc,
        timing.speedups if timing else {},
        timing.spread if timing else {},
        metrics,
        timing.load if timing else {},
    )
    return StageOutcome(res, deployed)
