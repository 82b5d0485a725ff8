"""Runners of the stages after pruning: ``quantize``, ``lowrank``, ``cluster``.

Each returns its details; a ``deployed`` entry there (the artefact the stage ships: the int8 ONNX
file, the packed clustered weights) replaces the float model's numbers in the stage's report row
(``apply_deployed``), so the row measures what is deployed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distillprune.cluster import ClusterConfig, WeightClustering, load_packed, save_packed, sizes
from distillprune.errors import CompressionError
from distillprune.lowrank import LowRankConfig, lowrank_
from distillprune.measure.latency import ort_latency
from distillprune.pipeline.stages import RUNNERS, _summary, _train, objective_for
from distillprune.pipeline.state import RunState
from distillprune.quant import QUANTIZERS, QuantConfig, default_filename, make_job
from distillprune.quant.base import normalised, run_onnx
from distillprune.recipes.schema import ClusterStage, LowrankStage, QuantizeStage
from distillprune.report.report import StageResult

HALF = ("fp16", "bf16")


def _sub(cfg_cls: type, stage: Any):
    return cfg_cls.model_validate(stage.model_dump(include=set(cfg_cls.model_fields)))


def _steps_per_epoch(state: RunState) -> int:
    n, bs = len(state.data.train), state.recipe.data.batch_size
    return n // bs if n > bs else 1


def onnx_accuracy(path: Path, state: RunState) -> float | None:
    d = state.data
    if d.test.y is None:
        return None
    x = normalised(d.test.x, d.mean, d.std)
    return float(100.0 * (run_onnx(path, x).argmax(1) == d.test.y.numpy()).mean())


@RUNNERS.register("quantize")
def run_quantize(st: QuantizeStage, state: RunState, index: int) -> dict:
    cfg = _sub(QuantConfig, st)
    name = st.filename or default_filename(st.method)
    train, steps = None, 0
    if st.method == "qat":
        opts = st.qat
        objective = objective_for(
            state, opts.distill, opts.label_smoothing
        )  # teacher snapshot before wrapping
        steps = opts.epochs * _steps_per_epoch(state)

        def train(_model, on_step) -> list[dict]:
            return _train(state, opts, opts.epochs, objective, index, "quantize", sub="qat", on_step=on_step)

    with tempfile.TemporaryDirectory(prefix="dp-quantize-") as tmp:
        workdir = state.stage_dir(index, "quantize") or Path(tmp)
        out = (state.run_dir or Path(tmp)) / name
        job = make_job(
            state.model, cfg, out, workdir, data=state.data, train=train, qat=st.qat, train_steps=steps
        )
        res = QUANTIZERS.get(cfg.method)(job)
        m = state.recipe.measure
        measure_cpu = m.enabled and cfg.method not in HALF  # fp16/bf16 target GPUs: ORT CPU timings mislead
        latency = (
            {f"ort_{k}": round(v, 4) for k, v in ort_latency(out, state.data.input_shape, m).items()}
            if measure_cpu
            else {}
        )
        acc = (
            onnx_accuracy(out, state)
            if res.details.get("runner", "onnxruntime") == "onnxruntime"
            else res.accuracy
        )
    details = {
        "method": res.method,
        "file": name,
        "bytes": res.bytes,
        "float_bytes": res.float_bytes,
        "agreement": round(res.agreement, 4),
        "reference": res.reference,
        "max_abs_diff": float(f"{res.max_abs_diff:.3g}"),
        **res.details,
    }
    if cfg.method in HALF:
        details["latency"] = "not measured on CPU (half precision targets GPUs)"
    details["deployed"] = {"artefact": name, "onnx_bytes": res.bytes, "latency_ms": latency, "accuracy": acc}
    return details


@RUNNERS.register("lowrank")
def run_lowrank(st: LowrankStage, state: RunState, index: int) -> dict:
    objective = objective_for(state, st.distill, st.label_smoothing)  # the teacher is the model before SVD
    plans = lowrank_(state.model, tuple(state.data.input_shape), _sub(LowRankConfig, st), state.spec.history)
    done = [p for p in plans if not p.skipped]
    hist = _train(state, st, st.epochs, objective, index, "lowrank") if st.epochs else []
    return {
        "factorized": [
            {
                "layer": p.name,
                "rank": p.rank,
                "full_rank": p.full_rank,
                "energy_kept": p.energy_kept,
                "macs": p.macs,
                "macs_after": p.macs_after,
            }
            for p in done
        ],
        "skipped": [{"layer": p.name, "reason": p.skipped} for p in plans if p.skipped],
        "layer_macs_saved": int(sum(p.macs - (p.macs_after or p.macs) for p in done)),
        **_summary(hist),
    }


@RUNNERS.register("cluster")
def run_cluster(st: ClusterStage, state: RunState, index: int) -> dict:
    cfg = _sub(ClusterConfig, st)
    objective = objective_for(state, st.distill, st.label_smoothing)
    wc = WeightClustering(state.model, cfg)
    ks = wc.apply()
    hist = (
        _train(state, st, st.epochs, objective, index, "cluster", on_step=wc.keep_zero) if st.epochs else []
    )
    clustered = wc.finalize()
    state.spec.history.append({"op": "cluster", "k": cfg.k, "layers": len(ks)})
    sd = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    if state.run_dir:
        info = save_packed(state.run_dir / cfg.filename, sd, clustered, cfg.codec)
        back = load_packed(state.run_dir / cfg.filename)
        if any(not np.array_equal(back[k].numpy(), sd[k].numpy()) for k in sd):
            raise CompressionError(f"{cfg.filename}: the packed weights do not round-trip")
    else:
        _, info = sizes(sd, clustered)
        info = {**info, "codec": cfg.codec, "file_bytes": info[f"packed_{cfg.codec}_bytes"]}
    ratio = info["dense_fp32_bytes"] / info["file_bytes"]
    return {
        "k": cfg.k,
        "layers": len(ks),
        "zeros_kept": sum(wc.zero_slot.values()),
        **info,
        "ratio": round(ratio, 2),
        **_summary(hist),
        "deployed": {
            "artefact": f"{cfg.filename} ({cfg.codec})" if state.run_dir else f"packed ({cfg.codec})",
            "onnx_bytes": info["file_bytes"],
        },
    }


def apply_deployed(result: StageResult) -> None:
    """Let the stage's deployed artefact (if any) stand for the stage in the report row."""
    dep = result.details.pop("deployed", None)
    if not dep:
        return
    result.details["float_model"] = {
        "accuracy": result.accuracy,
        "onnx_bytes": result.onnx_bytes,
        "latency_ms": dict(result.latency_ms),
    }
    result.artefact = dep["artefact"]
    if "onnx_bytes" in dep:
        result.onnx_bytes = dep["onnx_bytes"]
    if "latency_ms" in dep:
        result.latency_ms = dep["latency_ms"]
    if dep.get("accuracy") is not None:
        result.accuracy = round(dep["accuracy"], 2)
