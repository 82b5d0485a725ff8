"""Dynamic int8 quantization with ONNX Runtime: int8 weights, activations quantized at run time.

No calibration; it pays off on Linear-heavy models (``mlp``, transformer blocks) where the
MatMul/Gemm weights dominate. Convolutions are left in float unless ``op_types`` asks for them.
Embedding tables (a Gather from a weight, as in every text model) are stored in int8 too by default:
they are most of a small encoder's file (47 of 90 MB in all-MiniLM-L6-v2).
"""

from __future__ import annotations

from typing import Literal

from distillprune.quant.base import (
    QUANTIZERS,
    QuantJob,
    QuantResult,
    check_agreement,
    compare,
    excluded_nodes,
    export_float,
    op_counts,
    preprocess,
    run_onnx,
    run_torch,
)
from distillprune.quant.config import QuantConfig
from distillprune.quant.ort_static import qtype, require_weighted_ops
from distillprune.quant.registry import quantizer_for

LINEAR_OPS = ["MatMul", "Gemm"]


@QUANTIZERS.register("dynamic")
class DynamicConfig(QuantConfig):
    """int8 weights, activations quantized at run time (no calibration): for Linear-heavy models."""

    method: Literal["dynamic"] = "dynamic"


@quantizer_for(DynamicConfig)
def dynamic(job: QuantJob) -> QuantResult:
    from onnxruntime.quantization import quantize_dynamic

    cfg = job.cfg
    fp = export_float(job.model, job.input_shape, job.workdir / "float.onnx")
    prepared = preprocess(fp, job.workdir / "prepared.onnx")
    ops = cfg.op_types or (LINEAR_OPS + ["Gather"] if embedding_tables(prepared) else LINEAR_OPS)
    require_weighted_ops(prepared, ops)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(prepared),
        str(job.out),
        op_types_to_quantize=ops,
        per_channel=cfg.per_channel,
        weight_type=qtype(cfg.weight_type),
        nodes_to_exclude=excluded_nodes(prepared, cfg.layers) or None,
        extra_options={"MatMulConstBOnly": True},
    )
    cmp = compare(run_onnx(job.out, job.test_x), run_torch(job.model, job.test_x), job.test_y)
    counts = op_counts(job.out)
    res = QuantResult.measured(
        "dynamic",
        job.out,
        fp,
        cmp,
        details={
            "op_types": ops,
            "per_channel": cfg.per_channel,
            "integer_nodes": sum(v for k, v in counts.items() if k.endswith("Integer")),
        },
    )
    check_agreement(res, cfg, "exclude the most sensitive layers (layers: {exclude: [...]}) or use method=static / qat")
    return res


def embedding_tables(path) -> bool:  # type: ignore[no-untyped-def]
    """Whether the graph looks up rows of a weight (an embedding table: Gather whose data is an initializer)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    return any(n.op_type == "Gather" and n.input and n.input[0] in weights for n in g.node)
