"""fp16 / bf16 ONNX for GPU deployment: weights and activations in half precision, float32 at the
boundary (a Cast after the input and before the logits), so callers feed and read float32.

bf16 needs opset 22 (earlier Conv/Gemm do not accept bfloat16), and ONNX Runtime's CPU provider
has no bf16 kernels: its parity check runs on ONNX's reference evaluator. Parity is loose by
nature: top-1 agreement with the float model, with the max logit difference reported.
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np

from distillprune.core.batch import ArrayBatch, NamedInputs
from distillprune.errors import ExportError, QuantizationError
from distillprune.quant.base import (
    QUANTIZERS,
    QuantJob,
    QuantResult,
    check_agreement,
    compare,
    export_float,
    run_torch,
)
from distillprune.quant.config import QuantConfig
from distillprune.quant.registry import quantizer_for

# inputs that ONNX requires in float32 whatever the compute type: (op, input index)
FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _np_dtype(kind: str):
    if kind == "bf16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.float16


def to_half(model, kind: str = "fp16"):
    """Convert a float32 ``onnx.ModelProto`` (input 'input', output 'logits') to fp16 or bf16, in place."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target = TensorProto.FLOAT16 if kind == "fp16" else TensorProto.BFLOAT16
    g = model.graph
    keep32 = {n.input[i] for n in g.node for (op, i) in FLOAT32_INPUTS if n.op_type == op and len(n.input) > i}
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = numpy_helper.to_array(init).astype(_np_dtype(kind))
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = target
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(_np_dtype(kind)), a.t.name))
    # float32 at the boundary
    (inp,), (out,) = g.input, g.output
    for n in g.node:
        n.input[:] = [f"{inp.name}_half" if x == inp.name else x for x in n.input]
        n.output[:] = [f"{out.name}_half" if x == out.name else x for x in n.output]
    g.node.insert(0, helper.make_node("Cast", [inp.name], [f"{inp.name}_half"], to=target, name="cast_input"))
    g.node.append(helper.make_node("Cast", [f"{out.name}_half"], [out.name], to=TensorProto.FLOAT, name="cast_logits"))
    del g.value_info[:]
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizationError(f"{kind}: the model has an operator that does not accept {kind}: {first}") from None
    return model


def half_onnx(src, dst, kind: str = "fp16"):
    import onnx

    model = onnx.load(str(src))
    if kind == "bf16":
        from onnx import version_converter

        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 22:
            try:
                model = version_converter.convert_version(model, 22)
            except Exception as e:  # noqa: BLE001
                raise QuantizationError(
                    f"bf16: cannot upgrade the graph to opset 22 ({str(e).splitlines()[0]})"
                ) from None
    onnx.save(to_half(model, kind), str(dst))
    return dst


def run_any(path, x: ArrayBatch, limit: int) -> tuple[np.ndarray, str]:
    """Logits from ONNX Runtime's CPU provider, or from ONNX's reference evaluator where ORT has no kernel."""
    from distillprune.export.onnx import run_onnx

    try:
        return run_onnx(path, x), "onnxruntime"
    except ExportError:
        if isinstance(x, NamedInputs):  # the reference evaluator below feeds one "input" tensor
            raise
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(str(path))
        xs = x[:limit]
        # run() gives the list of outputs (a dict only with intermediate=True)
        return np.concatenate(
            [cast(list, ev.run(None, {"input": xs[i : i + 16]}))[0] for i in range(0, len(xs), 16)]
        ), "onnx reference evaluator"


def _half(job: QuantJob, kind: str) -> QuantResult:
    fp = export_float(job.model, job.input_shape, job.workdir / "float.onnx")
    job.out.parent.mkdir(parents=True, exist_ok=True)
    half_onnx(fp, job.out, kind)
    out, runner = run_any(job.out, job.test_x, limit=256)
    n = len(out)
    y = None if job.test_y is None else job.test_y[:n]
    cmp = compare(out, run_torch(job.model, job.test_x[:n]), y)
    res = QuantResult.measured(
        kind,
        job.out,
        fp,
        cmp,
        details={"runner": runner, "parity_samples": n, "target": "GPU (CUDA / TensorRT execution providers)"},
    )
    check_agreement(res, job.cfg, "a layer overflows in half precision; keep the model in float32")
    return res


@QUANTIZERS.register("fp16")
class FP16Config(QuantConfig):
    """A float16 ONNX file (for GPUs)."""

    method: Literal["fp16"] = "fp16"


@QUANTIZERS.register("bf16")
class BF16Config(QuantConfig):
    """A bfloat16 ONNX file (for GPUs)."""

    method: Literal["bf16"] = "bf16"


@quantizer_for(FP16Config)
def fp16(job: QuantJob) -> QuantResult:
    return _half(job, "fp16")


@quantizer_for(BF16Config)
def bf16(job: QuantJob) -> QuantResult:
    return _half(job, "bf16")
