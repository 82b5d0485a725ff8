"""``distillprune.quantize``: one entry point, dispatched by ``config.method`` through the registry."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distillprune.core.batch import NamedInputs, is_embedder
from distillprune.core.config import validate
from distillprune.data.base import DataBundle
from distillprune.errors import QuantizationError
from distillprune.quant.base import QUANTIZERS, QuantJob, QuantResult
from distillprune.quant.calibration import bundle_batches, tensor_batches
from distillprune.quant.config import QATOptions, QuantConfig
from distillprune.train.config import RuntimeConfig

SUFFIX = {"static": "int8", "dynamic": "int8-dynamic", "qat": "int8-qat", "fp16": "fp16", "bf16": "bf16"}


def default_filename(method: str) -> str:
    return f"model.{SUFFIX.get(method, method)}.onnx"


def make_job(
    model: nn.Module,
    cfg: QuantConfig,
    out: Path,
    workdir: Path,
    *,
    data: DataBundle | None = None,
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
    input_shape: tuple[int, ...] | None = None,
    teacher: nn.Module | None = None,
    train: Callable[..., list[dict]] | None = None,
    qat: QATOptions | None = None,
    train_steps: int = 0,
) -> QuantJob:
    """Calibration from ``calibration`` (normalised batches) or else the training split of ``data``;
    parity inputs from the test split (or the calibration batches when there is no data)."""
    if calibration is not None:
        batches = tensor_batches(calibration)
    elif data is not None:
        batches = bundle_batches(data, cfg.calibration)
    else:
        raise QuantizationError("quantize needs data (a DataBundle) or calibration batches")
    if cfg.parity == "auto":  # embedders are judged by cosine: the argmax of an embedding means nothing
        embedder = is_embedder(model)
        cfg = cfg.model_copy(update={"parity": "cosine" if embedder else "top1"})
    if data is not None:
        n = min(cfg.parity_samples, len(data.test))
        test_x, test_y = data.inputs("test", n), data.labels("test", n)
        shape = tuple(data.input_shape)
    else:
        xs = list(batches())
        if not xs:
            raise QuantizationError("calibration set is empty: static quantization needs at least one batch of inputs")
        if isinstance(xs[0], NamedInputs):
            test_x, test_y = NamedInputs.cat(xs)[: cfg.parity_samples], None
        else:
            test_x, test_y = np.concatenate(xs)[: cfg.parity_samples], None
        shape = tuple(test_x.shape[1:])
    if input_shape is not None and tuple(input_shape) != shape:
        raise QuantizationError(f"input_shape {tuple(input_shape)} differs from the data's {shape}")
    workdir.mkdir(parents=True, exist_ok=True)
    return QuantJob(model, shape, cfg, Path(out), workdir, batches, test_x, test_y, teacher, train, qat, train_steps)


def quantize(
    model: nn.Module,
    data: DataBundle | None = None,
    config: QuantConfig | dict | None = None,
    out: str | Path | None = None,
    *,
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
    teacher: nn.Module | None = None,
    qat: QATOptions | dict[str, Any] | None = None,
    runtime: RuntimeConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> QuantResult:
    """Quantize ``model`` to an ONNX file and check it against the float model.

    ``config``: a QuantConfig or its dict (``{"method": "static", "calibration": {"method": "entropy"}}``).
    ``qat``: for ``method="qat"``, QAT options (``{"epochs": 2, "optimizer": {"lr": 0.01}}``); the teacher
    defaults to a frozen copy of ``model`` as it is now. Returns a QuantResult (path, size, agreement...).
    """
    cfg = config if isinstance(config, QuantConfig) else validate(QuantConfig, config or {}, where="quantize config")
    out = Path(out) if out is not None else Path(default_filename(cfg.method))
    model = model.float().cpu().eval()
    train, steps, qat_opts = None, 0, None
    if cfg.method == "qat":
        if data is None:
            raise QuantizationError("method=qat trains the model: pass data (a DataBundle)")
        train, steps, qat_opts = _qat_trainer(model, data, qat, teacher, runtime, batch_size, seed)
    with tempfile.TemporaryDirectory(prefix="dp-quant-") as tmp:
        job = make_job(
            model,
            cfg,
            out,
            Path(tmp),
            data=data,
            calibration=calibration,
            teacher=teacher,
            train=train,
            qat=qat_opts,
            train_steps=steps,
        )
        return QUANTIZERS.get(cfg.method)(job)


def _qat_trainer(
    model: nn.Module,
    data: DataBundle,
    qat: QATOptions | dict[str, Any] | None,
    teacher: nn.Module | None,
    runtime: RuntimeConfig | None,
    batch_size: int,
    seed: int,
) -> tuple[Callable[..., list[dict]], int, QATOptions]:
    from distillprune.distill.distiller import snapshot
    from distillprune.distill.modes import objective_for
    from distillprune.train.trainer import FitSettings, fit

    opts = qat if isinstance(qat, QATOptions) else validate(QATOptions, qat or {}, where="qat options")
    frozen = teacher if teacher is not None else snapshot(model)
    objective = objective_for(opts.distill, opts.label_smoothing, lambda: frozen)
    runtime = runtime or RuntimeConfig(progress=False, tensorboard=False, device="cpu")

    def train(m: nn.Module, on_step) -> list[dict]:
        settings = FitSettings(opts.epochs, opts.optimizer, opts.schedule, opts.grad_clip)
        return fit(m, data, settings, objective, runtime=runtime, seed=seed, batch_size=batch_size, on_step=on_step)

    n = len(data.train)
    steps = opts.epochs * (n // batch_size if n > batch_size else 1)
    return train, steps, opts
