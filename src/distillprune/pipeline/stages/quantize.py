"""``quantize``: an int8 (static / dynamic / QAT) or fp16 / bf16 ONNX file; the stage's row measures it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from distillprune.core.batch import is_embedder
from distillprune.core.io import atomic_write
from distillprune.core.reporting import Deployed
from distillprune.export.onnx import onnx_accuracy, run_onnx
from distillprune.pipeline.run import embedding_metrics
from distillprune.pipeline.state import RunState
from distillprune.quant import QUANTIZERS, QATOptions, QuantConfig, default_filename, make_job
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

    def quant_config(self) -> QuantConfig:
        return QuantConfig.model_validate(self.model_dump(include=set(QuantConfig.model_fields)))


@register_stage(QuantizeStage)
def run_quantize(st: QuantizeStage, state: RunState, index: int) -> StageOutcome:
    cfg = st.quant_config()
    name = st.filename or default_filename(st.method)
    train, steps = None, 0
    if st.method == "qat":
        opts = st.qat
        assert opts is not None
        objective = state.objective(opts.distill, opts.label_smoothing)  # teacher snapshot before wrapping
        steps = opts.epochs * state.steps_per_epoch()

        def train(_model: nn.Module, on_step) -> list[dict]:  # type: ignore[no-untyped-def]
            return state.fit(opts, opts.epochs, objective, index, "quantize", sub="qat", on_step=on_step)

    with tempfile.TemporaryDirectory(prefix="dp-quantize-") as tmp:
        workdir = (state.stage_dir(index, "quantize") if state.writes else None) or Path(tmp)
        final = state.output_path(name, f"stages.{index - 1}.filename")
        out = Path(tmp) / Path(name).name  # moved into the run folder once it has passed its checks
        job = make_job(state.model, cfg, out, workdir, data=state.data, train=train, qat=st.qat, train_steps=steps)
        res = QUANTIZERS.get(cfg.method)(job)
        # fp16/bf16 target GPUs: ORT CPU timings mislead; under torchrun rank 0 times alone
        measure_cpu = state.recipe.measure.enabled and cfg.method not in HALF and ddp.is_rank0()
        timing = state.timer.time(out.read_bytes(), f"{index}:quantize") if measure_cpu and state.timer else None
        on_ort = res.details.get("runner", "onnxruntime") == "onnxruntime"
        embedder = is_embedder(state.model)
        labels = None if embedder else state.data.labels("test")
        acc = onnx_accuracy(out, state.data.inputs("test"), labels) if on_ort else res.accuracy
        metrics = embedding_metrics(state, run_onnx(out, state.data.inputs("test"))) if embedder and on_ort else None
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
    )
    return StageOutcome(res, deployed)
