"""Your own class: ``model.python: "path/to/file.py:ClassOrFactory"`` (or ``"package.module:Name"``).

The file is imported under a private module name (its top-level code runs; ``if __name__ ==
"__main__":`` blocks do not), the named class or factory is called with the recipe's ``kwargs`` (plus
``num_classes`` when it takes one and ``kwargs`` does not give it). The spec records the file's absolute
path and sha256, so ``load_checkpoint`` rebuilds the model from the checkpoint alone while the file is
there and unchanged, and says so in one line when it is not (``base=`` is the way out).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distillprune.core.checkpoint import ARCH_BUILDERS, ArchSpec
from distillprune.core.registry import nearest
from distillprune.errors import DistillpruneError
from distillprune.models.weights import file_sha256

_LOADED: dict[tuple[str, str], Any] = {}  # (absolute file, sha256) -> module: one class object per file version


def split_target(target: str) -> tuple[str, str]:
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise DistillpruneError(f"model.python: expected 'path/to/file.py:ClassOrFactory', got {target!r}")
    return where, attr


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(path: Path, sha: str) -> Any:
    key = (str(path), sha)
    if key in _LOADED:
        return _LOADED[key]
    name = f"distillprune_user_{path.stem}_{sha[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DistillpruneError(f"model.python: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(path.parent))  # the file's own sibling imports
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file may raise anything
        sys.modules.pop(name, None)
        raise DistillpruneError(f"model.python: importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(path.parent))
    _LOADED[key] = module
    return module


def resolve(target: str) -> tuple[Callable[..., nn.Module], dict[str, str]]:
    """The class/factory a target names, and the reference a spec records to find it again."""
    where, attr = split_target(target)
    if _is_file(where):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise DistillpruneError(f"model.python: file not found: {path} (from {target!r})")
        sha = file_sha256(path)
        module = _import_file(path, sha)
        ref = {"file": str(path), "attr": attr, "sha256": sha}
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise DistillpruneError(f"model.python: cannot import module '{where}' ({e})") from None
        file = getattr(module, "__file__", None)
        ref = {"module": where, "attr": attr, **({"file": file, "sha256": file_sha256(file)} if file else {})}
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise DistillpruneError(f"model.python: {where} has no '{part}'{nearest(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DistillpruneError(f"model.python: '{attr}' in {where} is a {type(obj).__name__}, not a class or factory")
    return obj, ref


def target_of(obj: Any) -> str:
    """The ``python:`` target of a class or factory defined in a file (Python API)."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    qual = getattr(obj, "__qualname__", "")
    if module is None or not qual or "<locals>" in qual:
        raise DistillpruneError(f"{obj!r}: not a module-level class or function; define it in a .py file")
    if module.__name__ == "__main__" or module.__name__.startswith("distillprune_user_"):
        file = getattr(module, "__file__", None)
        if module.__name__ == "__main__" or file is None:
            raise DistillpruneError(
                f"{qual} is defined in a script (__main__); move it into a module file so a "
                "checkpoint can find it again"
            )
        return f"{file}:{qual}"
    return f"{module.__name__}:{qual}"


def call(factory: Callable[..., nn.Module], kwargs: dict[str, Any], num_classes: int, target: str) -> nn.Module:
    kw = dict(kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "num_classes" in params and "num_classes" not in kw:
        kw["num_classes"] = num_classes
    try:
        model = factory(**kw)
    except TypeError as e:
        raise DistillpruneError(f"model.python: {target}(**{kw}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise DistillpruneError(f"model.python: {target} returned a {type(model).__name__}, not an nn.Module")
    return model


def python_model(
    target: str, num_classes: int, input_shape: Sequence[int], kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, ArchSpec]:
    """Build a user model from ``target`` and the spec that rebuilds it (``source: python``)."""
    factory, ref = resolve(target)
    kwargs = dict(kwargs or {})
    model = call(factory, kwargs, num_classes, target)
    return model, ArchSpec(target, num_classes, list(input_shape), kwargs, source="python", ref=ref)


@ARCH_BUILDERS.register("python")
def _from_spec(spec: ArchSpec) -> nn.Module:
    ref = spec.ref or {}
    file, attr = ref.get("file"), ref.get("attr")
    if attr is None:
        raise DistillpruneError(f"python model {spec.name!r}: the checkpoint records no class (ref.attr)")
    where = ref.get("module") or file
    target = f"{where}:{attr}"
    if file is not None:
        if not Path(file).is_file():
            raise DistillpruneError(
                f"the model's class came from {file}, which is gone; put the file back or pass "
                "base=<the unpruned model> to load_checkpoint"
            )
        sha = file_sha256(file)
        if ref.get("sha256") and sha != ref["sha256"]:
            raise DistillpruneError(
                f"the model's class came from {file}, which changed since the checkpoint was "
                f"saved (sha256 {ref['sha256'][:12]} -> {sha[:12]}); restore it or pass "
                "base=<the unpruned model> to load_checkpoint"
            )
    factory, _ = resolve(target)
    return call(factory, dict(spec.kwargs), spec.num_classes, target)
