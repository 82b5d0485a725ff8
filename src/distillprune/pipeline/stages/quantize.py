"""``quantize``: an int8 (static / dynamic / QAT) or fp16 / bf16 ONNX file; the stage's row measures it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from distillprune.core.reporting import Deployed
from distillprune.export.onnx import onnx_accuracy, run_onnx
from distillprune.measure.latency import ort_latency
from distillprune.pipeline.run import embedding_metrics
from distillprune.pipeline.state import RunState
from distillprune.quant import QUANTIZERS, QATOptions, QuantConfig, default_filename, make_job
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig

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
        workdir = state.stage_dir(index, "quantize") or Path(tmp)
        out = state.output_path(name, f"stages.{index - 1}.filename") or Path(tmp) / name
        job = make_job(state.model, cfg, out, workdir, data=state.data, train=train, qat=st.qat, train_steps=steps)
        res = QUANTIZERS.get(cfg.method)(job)
        m = state.recipe.measure
        measure_cpu = m.enabled and cfg.method not in HALF  # fp16/bf16 target GPUs: ORT CPU timings mislead
        latency = {f"ort_{k}": round(v, 4) for k, v in ort_latency(out, state.data.input_shape, m).items()} \
            if measure_cpu else {}
        on_ort = res.details.get("runner", "onnxruntime") == "onnxruntime"
        embedder = getattr(state.model, "output_kind", "logits") == "embedding"
        labels = None if embedder else state.data.labels("test")
        acc = onnx_accuracy(out, state.data.inputs("test"), labels) if on_ort else res.accuracy
        metrics = embedding_metrics(state, run_onnx(out, state.data.inputs("test"))) if embedder and on_ort else None
    if cfg.method in HALF:
        res.details["latency"] = "not measured on CPU (half precision targets GPUs)"
    res.path = name
    return StageOutcome(res, Deployed(name, res.bytes, latency, acc, metrics))
