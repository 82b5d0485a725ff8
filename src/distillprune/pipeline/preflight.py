"""Checks that catch, before anything trains, what a run would otherwise hit stages later: every model the
recipe names (the model, students, peers) builds and fits the data -- built on the meta device, so no
memory or time is spent on weights --, checkpoints named as teachers or models fit the data, the device
exists, the runtime's thread counts are sane and output file names stay in the run folder.

``distillprune validate`` and every run (``pipeline.execute``) call :func:`preflight` once the data is loaded.
Each failure is one ``DistillpruneError`` line naming the recipe key.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.overrides import TorchFunctionMode

from distillprune.core.checkpoint import ArchSpec, read_meta
from distillprune.data.base import DataBundle
from distillprune.errors import CheckpointError, DataError, DistillpruneError, RecipeError
from distillprune.models.build import make_model
from distillprune.models.config import ModelConfig
from distillprune.models.user import admitted, split_target
from distillprune.pipeline.rundir import RunFolderError
from distillprune.pipeline.state import confined
from distillprune.recipes.schema import Recipe

#: models with more parameters than this are not built on the CPU when the meta device cannot run them
CPU_FALLBACK_PARAMS = 50_000_000
#: models up to this size are run on the CPU straight away: building and running one costs less than the meta
#: device's first forward, which imports torch's compiler (torch._dynamo and sympy: seconds, `validate`'s most)
CPU_CHECK_PARAMS = 5_000_000


def preflight(recipe: Recipe, data: DataBundle, *, base_model: bool = True) -> None:
    """Raise one line for the first thing in ``recipe`` that cannot run on ``data`` (see the module doc).

    ``base_model=False`` skips ``recipe.model`` (the run builds it right away and probes it itself).
    Torch's CPU random state is left as it was (building a model draws from it)."""
    with torch.random.fork_rng(devices=[]):
        _preflight(recipe, data, base_model)


def _preflight(recipe: Recipe, data: DataBundle, base_model: bool) -> None:
    check_runtime(recipe)
    check_filenames(recipe)
    check_sizes(recipe, data)
    for where, cfg in model_configs(recipe):
        if where == "model" and not base_model:
            continue
        check_model(cfg, data, where)
    for where, path in teacher_checkpoints(recipe):
        check_checkpoint(path, data, where)
    check_pruning(recipe, data)


def check_pruning(recipe: Recipe, data: DataBundle) -> None:
    """Each stage's own dry-run (``StageConfig.dry_run``) on the model it will meet, while the stages before
    it keep the layers: e.g. more blocks than the model can lose, or a width request that removes no
    channel, is an error now, not after the stages before it have trained."""
    current = recipe.model
    for i, st in enumerate(recipe.stages):
        current = getattr(st, "student", None) or current
        st.dry_run(functools.partial(_buildable, current, data), data, f"stages.{i}", current.name)
        if not st.keeps_layers:
            return  # the model changes here: later stages would need the changed one


def _buildable(cfg: ModelConfig, data: DataBundle) -> nn.Module | None:
    """The model of ``cfg`` on the CPU when it is a zoo model built from scratch (else None)."""
    return None if cfg.checkpoint or cfg.source != "zoo" else _cpu_model(cfg, data)


class _NoRandomInit(TorchFunctionMode):
    """Random initialisation of a meta tensor does nothing (it has no values), so skip it: torch would route it
    through its reference implementations, whose first call imports torch's compiler."""

    RANDOM = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self.RANDOM and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _on_meta() -> Iterator[None]:
    """Build modules on the meta device: shapes only, no memory, no time spent initialising weights."""
    with torch.device("meta"), _NoRandomInit():
        yield


def _cpu_model(cfg: ModelConfig, data: DataBundle) -> nn.Module | None:
    try:
        with _on_meta():
            n = _params(_arch(cfg, data.num_classes, tuple(data.input_shape)))
    except Exception:  # noqa: BLE001 - check_model has judged this model already
        n = 0
    if n > CPU_FALLBACK_PARAMS:
        return None
    return _arch(cfg, data.num_classes, tuple(data.input_shape))


def check_runtime(recipe: Recipe) -> None:
    rt = recipe.runtime
    if rt.device == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise RecipeError(
            f"runtime.device: 'cuda' but CUDA is not available ({why}; torch {torch.__version__}); "
            "use device: auto or cpu"
        )
    most = max(64, 8 * (os.cpu_count() or 1))
    for where, n in (("runtime.threads", rt.threads), ("measure.threads", getattr(recipe.measure, "threads", None))):
        if isinstance(n, int) and n > most:
            raise RecipeError(f"{where}: {n} threads on a machine with {os.cpu_count()} CPUs; expected at most {most}")


def check_sizes(recipe: Recipe, data: DataBundle) -> None:
    """Options whose size the data bounds: padding no larger than the images, measurement batches that fit
    in memory (they are random inputs, not bounded by the data set)."""
    shape = tuple(data.input_shape)
    pad = recipe.data.augment.crop_padding
    if len(shape) == 3 and pad > max(shape[1:]):
        raise RecipeError(
            f"data.augment.crop_padding: {pad} pixels around {shape[1]}x{shape[2]} images; expected "
            f"at most {max(shape[1:])}"
        )
    have = _memory_bytes()
    sample = 4 * math.prod(shape)
    for where, sizes in (
        ("measure.batch_sizes", recipe.measure.batch_sizes),
        ("measure.gpu_batch_size", [getattr(recipe.measure, "gpu_batch_size", 1)]),
    ):
        for bs in sizes:
            if have and bs * sample > have // 4:
                raise RecipeError(
                    f"{where}: a batch of {bs} inputs of shape {shape} needs "
                    f"{bs * sample / 2**30:.1f} GiB; this machine has {have / 2**30:.1f} GiB"
                )


def check_filenames(recipe: Recipe) -> None:
    """Every ``filename`` a stage names (a quantize stage's default too) stays inside the run folder, is none
    of the run's own files, and is written by one stage only (checked again when written)."""
    root = Path("/distillprune-run-folder")  # syntactic check: absolute, '..', reserved names
    written: dict[str, int] = {}
    for i, st in enumerate(recipe.stages):
        name = st.output_file()
        default = getattr(st, "filename", None) is None
        if name is None:
            continue
        confined(root, name, f"stages.{i}.filename")
        key = os.path.normpath(name)
        if key in written:
            j = written[key]
            raise RecipeError(
                f"stages.{i}.filename: {name!r}{' (the default)' if default else ''} is already written by "
                f"stages.{j} ({recipe.stages[j].type}); give each stage its own file name"
            )
        written[key] = i


def model_configs(node: Any, where: str = "") -> Iterator[tuple[str, ModelConfig]]:
    """Every ModelConfig in a recipe, with its location (``model``, ``stages.2.student``...)."""
    if isinstance(node, ModelConfig):
        yield where, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from model_configs(getattr(node, name), f"{where}.{name}" if where else name)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from model_configs(v, f"{where}.{i}")


def teacher_checkpoints(recipe: Recipe) -> Iterator[tuple[str, str]]:
    """``(location, folder)`` of every teacher checkpoint a stage's ``distill`` block names."""
    for i, st in enumerate(recipe.stages):
        for block_name in ("distill", "qat"):
            block = getattr(st, block_name, None)
            block = getattr(block, "distill", block) if block_name == "qat" else block
            if block is None:
                continue
            teacher = getattr(block, "teacher", "auto")
            if isinstance(teacher, str) and teacher != "auto":
                yield f"stages.{i}.{block_name}.teacher", teacher
            for j, t in enumerate(getattr(block, "teachers", None) or []):
                if isinstance(t, str) and t != "auto":
                    yield f"stages.{i}.{block_name}.teachers.{j}", t


def check_checkpoint(folder: str, data: DataBundle, where: str) -> None:
    try:
        meta = read_meta(folder)
        spec = ArchSpec.from_dict(meta.get("arch"))
        spec.folder = Path(folder)
        if spec.source == "python":  # its code may be imported only under the trust rule (core.trust)
            admitted(spec)
    except (CheckpointError, DistillpruneError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    if tuple(spec.input_shape) != tuple(data.input_shape) or spec.num_classes != data.num_classes:
        raise DataError(
            f"{where}: checkpoint {folder} is a model for inputs {tuple(spec.input_shape)} and "
            f"{spec.num_classes} classes, but the data has inputs {tuple(data.input_shape)} and "
            f"{data.num_classes} classes"
        )


def _arch(cfg: ModelConfig, classes: int, shape: tuple[int, ...]) -> nn.Module:
    """The architecture a model config builds (zoo name or your class, new head), without its weights file."""
    return make_model(cfg, classes, shape, load_weights_file=False)[0]


def check_model(cfg: ModelConfig, data: DataBundle, where: str) -> None:
    """``cfg`` builds and maps the data's inputs to one logit per class (a small model on the CPU; a larger one on
    the meta device first, else the CPU)."""
    if cfg.checkpoint:
        check_checkpoint(cfg.checkpoint, data, f"{where}.checkpoint")
        return
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise RecipeError(f"{where}.weights: no file {cfg.weights}")
    if cfg.source != "zoo":  # a folder the source loads (hf): the run's own probe checks inputs and outputs
        return
    shape, classes = tuple(data.input_shape), data.num_classes
    if classes == 0 and cfg.task != "embedding":
        raise DataError(
            f"{where}: the data has no labels, so no classes for model '{cfg.python or cfg.name}' to predict: "
            "train an embedding model on it (model.task: embedding, with an ssl objective or a teacher)"
        )
    try:
        with _on_meta():
            model = _arch(cfg, classes, shape)
    except DistillpruneError as e:
        raise RecipeError(f"{where}: {e}") from None
    except Exception:  # noqa: BLE001 - a builder that cannot build on the meta device: try the CPU below
        model = None
    if model is not None:
        _check_size(model, cfg, where)
    if model is not None and _params(model) > CPU_CHECK_PARAMS:
        try:
            out = _forward(model, shape, torch.device("meta"))
        except Exception:  # noqa: BLE001 - an op without a meta kernel, or a real mismatch: the CPU decides
            out = None
        if out is not None:
            _check_output(out, cfg, data, where)
            return
        if _params(model) > CPU_FALLBACK_PARAMS:
            return  # too big to build twice; the run's own probe checks it
    try:
        model = _arch(cfg, classes, shape)
    except DistillpruneError as e:
        raise RecipeError(f"{where}: {e}") from None
    try:
        out = _forward(model, shape, torch.device("cpu"))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise DataError(
            f"{where}: data inputs of shape {shape} do not fit model '{cfg.python or cfg.name}': {_first_line(e)}"
        ) from None
    _check_output(out, cfg, data, where)


def _forward(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.zeros(2, *shape, device=device))


def _check_output(out: Any, cfg: ModelConfig, data: DataBundle, where: str) -> None:
    if cfg.task == "embedding":  # an embedding model: (B, D) features, of any width
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(
                f"{where}: model '{cfg.python or cfg.name}' with task: embedding outputs {got} per sample; "
                "expected one feature vector (D,)"
            )
        return
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"{where}: model '{cfg.python or cfg.name}' (kwargs {cfg.kwargs}) outputs {got} per "
            f"sample, but the data has {data.num_classes} classes (expected ({data.num_classes},) logits)"
        )


def _check_size(model: nn.Module, cfg: ModelConfig, where: str) -> None:
    need = 4 * _params(model)
    have = _memory_bytes()
    if have and need > have:
        raise RecipeError(
            f"{where}: model '{cfg.python or cfg.name}' with kwargs {cfg.kwargs} has "
            f"{_params(model):.3g} parameters ({need / 2**30:.1f} GiB of fp32 weights), more than "
            f"this machine's {have / 2**30:.1f} GiB of memory"
        )


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_not_inputs(p: Path, recipe: Recipe) -> None:
    """Refuse a run folder that is, or holds, a file or folder the recipe reads (the data, a model, tokenizer
    or teacher folder, a weights or class file): ``--force`` and starting over would replace or clear it."""
    real = Path(os.path.realpath(p))
    for key, path in input_paths(recipe):
        inp = Path(os.path.realpath(Path(path).expanduser()))
        if inp == real or real in inp.parents:
            what = "is" if inp == real else "holds"
            raise RunFolderError(f"--out {p} {what} {key} ({path}); choose a run folder apart from the inputs")


def input_paths(recipe: Recipe) -> list[tuple[str, str]]:
    """``(recipe key, path)`` of every file and folder the recipe reads."""
    found = [("data.path", recipe.data.path), ("data.text.tokenizer", recipe.data.text.tokenizer)]
    for where, cfg in model_configs(recipe):
        found += [(f"{where}.{k}", getattr(cfg, k, None)) for k in ("path", "checkpoint", "weights")]
        python = cfg.python if isinstance(cfg.python, str) else None
        if python and ":" in python and python.rpartition(":")[0].endswith(".py"):
            found.append((f"{where}.python", split_target(python)[0]))
    found += list(teacher_checkpoints(recipe))
    return [(k, str(v)) for k, v in found if isinstance(v, (str, Path)) and v and not str(v).startswith("package:")]
