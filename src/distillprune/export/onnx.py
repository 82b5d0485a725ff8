"""ONNX export with a dynamic batch axis (and a dynamic sequence axis for models with named text inputs),
and the one owner of running ONNX files: ONNX Runtime sessions, batched logits, comparison with the torch
model (agreement, max abs difference, cosine, accuracy)."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillprune.core.batch import (
    ArrayBatch,
    NamedInputs,
    as_args,
    call,
    example_inputs,
    has_named_inputs,
    input_names,
)
from distillprune.core.io import atomic_write
from distillprune.errors import ExportError

OPSET = 17


#: model class -> the exporter that worked for it ("torchscript" | "dynamo"): later exports of the same
#: architecture (each stage's measurement, the search's candidates) go straight to it
_WORKS: dict[str, str] = {}
log = logging.getLogger("distillprune.export")


def onnx_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """Serialise ``model`` (eval mode, CPU, fp32) to ONNX with input 'input' and output 'logits'; a model
    with named inputs (text) keeps its input names, with dynamic batch and sequence axes.

    The TorchScript exporter is ~30x faster than the dynamo one for small nets and gives the same graph; where
    it fails (e.g. an adaptive pool whose output size is not a factor of its input, as VGG at 32x32) the dynamo
    exporter is used, and remembered for that model class. What the exporters print (graph dumps, progress
    lines) goes to the ``distillprune.export`` logger (a run's ``run.log``), not to the console.
    """
    model = copy.deepcopy(model).float().cpu().eval()
    if has_named_inputs(model):
        return _named_onnx_bytes(model, input_shape)
    x = torch.zeros(1, *input_shape)
    key = f"{type(model).__module__}.{type(model).__qualname__}"
    order = ["dynamo", "torchscript"] if _WORKS.get(key) == "dynamo" else ["torchscript", "dynamo"]
    errors = []
    for how in order:
        with _quiet() as out:
            try:
                data = _EXPORTERS[how](model, x)
            except Exception as e:  # noqa: BLE001 - any failure of one exporter: try the other
                data, err = None, e
        if out.text:
            log.debug("ONNX export (%s) of %s printed:\n%s", how, key, out.text)
        if data is not None:
            _WORKS[key] = how
            return data
        errors.append(f"{how}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        log.debug("ONNX export (%s) of %s failed: %s", how, key, err)
    raise ExportError(f"ONNX export of {type(model).__name__} failed ({'; '.join(errors)})")


def _torchscript(model: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,  # type: ignore[arg-type]  # torch's stubs: a path only, but it writes to a file object too
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def _dynamo(model: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    if prog is None:
        raise ExportError("the dynamo exporter returned nothing")
    prog.save(buf)  # type: ignore[arg-type]  # torch's stubs: a path only, but it writes to a file object too
    return buf.getvalue()


_EXPORTERS = {"torchscript": _torchscript, "dynamo": _dynamo}


class _Captured:
    text = ""


@contextlib.contextmanager
def _quiet() -> Iterator[_Captured]:
    """Capture everything written to stdout/stderr meanwhile, from Python and from C++ (file descriptors)."""
    got = _Captured()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        try:
            for fd in (1, 2):
                os.dup2(tmp.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()) as so, contextlib.redirect_stderr(io.StringIO()) as se:
                try:
                    yield got
                finally:
                    py = so.getvalue() + se.getvalue()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            got.text = (py if "py" in locals() else "") + tmp.read().decode("utf-8", "replace")


def _named_onnx_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    # traced at batch 2 so that no size-1 batch dimension is folded into the graph
    args = as_args(model, example_inputs(model, input_shape, batch=2))
    names = input_names(model)[: len(args)]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                args,
                buf,  # type: ignore[arg-type]  # as above
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
            )
        except Exception as e:  # noqa: BLE001 - tracing failures of foreign model code
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from None
    return buf.getvalue()


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    data = onnx_bytes(model, input_shape)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _tensors_of(graph) -> Iterator:
    """Every tensor of an ONNX graph: initializers, sparse initializers, constants, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors_of(attr.g)
            for g in attr.graphs:
                yield from _tensors_of(g)


def check_external_data(path: str | Path, model=None) -> None:
    """Refuse an ONNX file whose tensors point to external data outside the file's own folder (an absolute
    path, ``..``, a link that leaves it): loading it would read any file the user can read. ``model`` is the
    file's proto when the caller has parsed it already (``onnx.load(..., load_external_data=False)``)."""
    import onnx

    path = Path(path)
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - not ONNX at all: ONNX Runtime says so in its own words
            return
    root = path.resolve().parent
    for tensor in _tensors_of(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        rel = Path(location)
        if not location or "\0" in location or rel.is_absolute() or ".." in rel.parts:
            bad = True
        else:
            bad = not (root / rel).resolve().is_relative_to(root)
        if bad:
            raise ExportError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the model's folder; "
                "refused (external data must be a file beside the model)"
            )


def session(path_or_bytes: str | Path | bytes, threads: int = 1):
    import onnxruntime as ort

    if not isinstance(path_or_bytes, bytes):
        check_external_data(path_or_bytes)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def feeds(sess, x: ArrayBatch) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds of one batch: named inputs by name (those the graph takes), else 'input'."""
    if isinstance(x, NamedInputs):
        arrays = x.numpy()
        wanted = [i.name for i in sess.get_inputs()]
        missing = [n for n in wanted if n not in arrays]
        if missing:
            raise ExportError(f"the ONNX model takes inputs {wanted}; the data has {sorted(arrays)}")
        return {n: arrays[n] for n in wanted}
    return {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}


def run_onnx(path_or_bytes: str | Path | bytes, x: ArrayBatch, batch: int = 256, threads: int = 1) -> np.ndarray:
    """Logits of an ONNX model on ``x`` (normalised float32 inputs, or named text inputs), batched, on ONNX
    Runtime's CPU provider."""
    try:
        sess = session(path_or_bytes, threads)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None
    if isinstance(x, NamedInputs):
        return np.concatenate([sess.run(None, feeds(sess, x[i : i + batch]))[0] for i in range(0, len(x), batch)])
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = sess.get_inputs()[0].name  # distillprune names it 'input'; another exporter may not
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


@torch.no_grad()
def run_torch(model: nn.Module, x: ArrayBatch, batch: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode, CPU, fp32) on ``x``, batched."""
    model = copy.deepcopy(model).float().cpu().eval()
    if isinstance(x, NamedInputs):
        return np.concatenate([call(model, x[i : i + batch].cpu()).float().numpy() for i in range(0, len(x), batch)])
    return np.concatenate(
        [
            model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))).float().numpy()
            for i in range(0, len(x), batch)
        ]
    )


def mean_cosine(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean cosine similarity of corresponding rows (how close two embeddings of the same inputs are)."""
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    num = (out * ref).sum(1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    return float((num / np.maximum(den, 1e-12)).mean())


def compare(out: np.ndarray, ref: np.ndarray, y: np.ndarray | None = None) -> dict[str, float | None]:
    """Top-1 agreement of ``out`` with ``ref``, max abs logit difference, mean row cosine (the parity of
    embeddings, where top-1 means nothing), and both accuracies (%) with labels."""
    out, ref = out.astype(np.float32), ref.astype(np.float32)
    res: dict[str, float | None] = {
        "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(out - ref).max()),
        "cosine": mean_cosine(out, ref),
        "accuracy": None,
        "float_accuracy": None,
    }
    if y is not None:
        res["accuracy"] = float(100.0 * (out.argmax(1) == y).mean())
        res["float_accuracy"] = float(100.0 * (ref.argmax(1) == y).mean())
    return res


def parity(
    model: nn.Module, path_or_bytes: str | Path | bytes, x: torch.Tensor | np.ndarray | NamedInputs
) -> dict[str, float]:
    """Max abs difference of logits, top-1 agreement and mean cosine between torch and ONNX Runtime on ``x``."""
    if isinstance(x, NamedInputs):
        xn: ArrayBatch = x.cpu()
    else:
        xn = x.float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)
    cmp = compare(run_onnx(path_or_bytes, xn), run_torch(model, xn))
    return {
        "max_abs_diff": float(cmp["max_abs_diff"] or 0.0),
        "top1_agreement": float(cmp["agreement"] or 0.0),
        "cosine": float(cmp["cosine"] or 0.0),
    }


def onnx_accuracy(path_or_bytes: str | Path | bytes, x: ArrayBatch, y: np.ndarray | None) -> float | None:
    """Top-1 (%) of an ONNX model on normalised inputs ``x`` with labels ``y`` (None without labels)."""
    if y is None:
        return None
    return float(100.0 * (run_onnx(path_or_bytes, x).argmax(1) == y).mean())
