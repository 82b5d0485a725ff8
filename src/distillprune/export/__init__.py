"""Export to deployment formats."""
from distillprune.export.onnx import export_onnx, onnx_bytes, parity, session

__all__ = ["export_onnx", "onnx_bytes", "parity", "session"]
