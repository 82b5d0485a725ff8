"""``distillprune.quantize``: one entry point, dispatched by the config's type (one class per scheme:
``StaticConfig``, ``DynamicConfig``, ``QATConfig``, ``FP16Config``, ``BF16Config``; ``QUANTIZERS``), each run by
its own quantizer (``quant.registry.quantizer_of``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distillprune.core.batch import NamedInputs, is_embedder
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp
from distillprune.core.io import safe_mkdir
from distillprune.data.base import DataBundle
from distillprune.distill.modes import finetune_objective
from distillprune.errors import QuantizationError
from distillprune.quant.base import QuantJob, QuantResult
from distillprune.quant.calibration import bundle_batches, tensor_batches
from distillprune.quant.config import QATOptions, QuantConfig
from distillprune.quant.qat import QATConfig
from distillprune.quant.registry import QUANTIZERS, quantizer_of
from distillprune.train.context import Context
from distillprune.train.trainers import Trainer, fit_trainer

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
    safe_mkdir(workdir)  # in a run folder: level by level, never through a planted link
    return QuantJob(model, shape, cfg, Path(out), workdir, batches, test_x, test_y, teacher, train, qat, train_steps)


def scheme_config(cfg: QuantConfig | dict[str, Any] | None) -> QuantConfig:
    """The scheme's own config class for ``cfg``: a scheme config as it is; a plain ``QuantConfig`` (or a
    stage's) or a dict through the class registered for its ``method`` (default ``static``)."""
    if isinstance(cfg, QuantConfig) and type(cfg) is QUANTIZERS.get(cfg.method):
        return cfg
    if isinstance(cfg, QuantConfig):
        raw = cfg.model_dump(include=set(QuantConfig.model_fields))
        qat = getattr(cfg, "qat", None)
        if qat is not None:
            raw["qat"] = qat
    else:
        raw = dict(cfg or {})
    method = raw.get("method", "static")
    if not isinstance(method, str):
        raise QuantizationError(f"quantize config: method must be a name, received method={method!r}")
    return validate(QUANTIZERS.get(method), raw, where="quantize config")


def quantize(
    model: nn.Module,
    cfg: QuantConfig | dict[str, Any] | None = None,
    data: DataBundle | None = None,
    *,
    teacher: nn.Module | None = None,
    trainer: Trainer | None = None,
    history: ArchSpec | list[HistoryOp] | None = None,
    context: Context | None = None,
    out: str | Path | None = None,
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
    workdir: Path | None = None,
) -> QuantResult:
    """Quantize ``model`` to an ONNX file (``out``, default ``model.<method>.onnx``) and check it against the
    float model, as the recipe's quantize stage does.

    ``cfg``: the scheme's config (``StaticConfig(calibration={"method": "entropy"})``, ``DynamicConfig()``,
    ``QATConfig(qat={"epochs": 2, "optimizer": {"lr": 0.01}})``, ``FP16Config()``, ``BF16Config()``), a
    ``QuantConfig`` or a dict, dispatched by its type (a dict or a plain QuantConfig by its ``method``).
    ``data``: a DataBundle (calibration from its training split, parity on its test split);
    ``calibration``: normalised calibration batches instead (without data, parity on them too). QAT trains
    ``model`` in place with KD from
    ``teacher`` (default: a frozen copy of ``model`` as it is now) through ``trainer`` (default:
    ``fit_trainer(cfg.qat, data, context)``: the context's loader, augmentation included). ``history`` is
    left as it is (the model keeps its architecture). ``workdir``: intermediate files (default: a
    temporary folder). Returns a QuantResult (path, size, agreement...).
    """
    conf = scheme_config(cfg)
    ctx = context or Context()
    out = Path(out) if out is not None else Path(default_filename(conf.method))
    model = model.float().cpu().eval()
    train, steps, opts = None, 0, None
    if isinstance(conf, QATConfig):
        if not isinstance(data, DataBundle):
            raise QuantizationError("method=qat trains the model: pass data (a DataBundle)")
        opts = conf.qat or QATOptions()
        fit = trainer or fit_trainer(opts, data, ctx, "quantize")
        objective = finetune_objective(opts.distill, opts.label_smoothing, model, teacher, ctx.loader.seed, data)
        train, steps = qat_trainer(data, opts, objective, fit, ctx)
    with tempfile.TemporaryDirectory(prefix="dp-quant-") as tmp:
        job = make_job(
            model,
            conf,
            out,
            workdir or Path(tmp),
            data=data,
            calibration=calibration,
            teacher=teacher,
            train=train,
            qat=opts,
            train_steps=steps,
        )
        return quantizer_of(conf)(job)


def qat_trainer(
    data: DataBundle, opts: QATOptions, objective: nn.Module, trainer: Trainer, context: Context
) -> tuple[Callable[..., list[dict]], int]:
    """QAT's ``train(model, on_step)`` over ``trainer`` with ``objective`` (built before the model is wrapped:
    the default teacher is the model as it is), and the optimizer steps it takes."""

    def train(m: nn.Module, on_step: Callable[[nn.Module], None]) -> list[dict]:
        return trainer(m, objective, opts.epochs, "qat", on_step)

    n, bs = len(data.train), context.loader.batch_size
    return train, opts.epochs * (n // bs if n > bs else 1)
