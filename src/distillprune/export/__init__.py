"""Export to deployment formats, and running what was exported."""

from distillprune.export.onnx import (
    compare,
    export_onnx,
    onnx_accuracy,
    onnx_bytes,
    parity,
    run_onnx,
    run_torch,
    session,
)

__all__ = ["compare", "export_onnx", "onnx_accuracy", "onnx_bytes", "parity", "run_onnx", "run_torch", "session"]
