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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from distillprune.core.checkpoint import ARCH_BUILDERS, ArchSpec
from distillprune.core.registry import nearest
from distillprune.core.trust import current_trust
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


@contextmanager
def no_bytecode() -> Iterator[None]:
    """No ``__pycache__`` written while the block imports: not beside a user's class file, not inside a
    checkpoint's ``code/`` folder (their folders are theirs; a checkpoint stays the files it was saved with)."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


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
        with no_bytecode():
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
            with no_bytecode():
                module = importlib.import_module(where)
        except ImportError as e:
            raise DistillpruneError(f"model.python: cannot import module '{where}' ({e})") from None
        file = getattr(module, "__file__", None)
        ref = {"module": where, "attr": attr, **({"file": file, "sha256": file_sha256(file)} if file else {})}
    return _attr(module, attr, where), ref


def _attr(module: Any, attr: str, where: str) -> Callable[..., nn.Module]:
    obj: Any = module
    for part in attr.split("."):
        if part.startswith("__") or not hasattr(obj, part):  # dunders lead out of the module (__builtins__)
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise DistillpruneError(f"model.python: {where} has no '{part}'{nearest(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DistillpruneError(f"model.python: '{attr}' in {where} is a {type(obj).__name__}, not a class or factory")
    return obj


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
    spec = ArchSpec(target, num_classes, list(input_shape), kwargs, source="python", ref=ref, trusted=True)
    if ref.get("file"):
        _bundle(spec, ref["file"])
    return model, spec


def vouched_code(target: str) -> tuple[str, str] | None:
    """``(sha256, place)`` of the code a ``model.python`` target names -- ``place`` is the absolute file, or the
    installed module's name -- for a run to vouch for its own class when it reloads its checkpoints (no
    import for a file; a module is found through its package)."""
    where, _ = split_target(target)
    if _is_file(where):
        path = Path(where).expanduser().resolve()
        return (file_sha256(path), str(path)) if path.is_file() else None
    try:
        with no_bytecode():
            found = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return (file_sha256(origin), where) if origin and Path(origin).is_file() else None


CODE_DIR = "code"  # a checkpoint's copy of the user's class file: <folder>/code/<file name>


def bundled_name(file: str | Path) -> str:
    return f"{CODE_DIR}/{Path(file).name}"


def _bundle(spec: ArchSpec, file: str | Path) -> None:
    """The checkpoints of ``spec`` carry the class file, so ``trust_code`` can rebuild it from the folder."""
    spec.bundle[bundled_name(file)] = str(file)
    spec.ref["bundled"] = bundled_name(file)


def _refuse(spec: ArchSpec, why: str) -> DistillpruneError:
    ref = spec.ref or {}
    what = f"{ref.get('module') or ref.get('file')}:{ref.get('attr')}"
    what = "".join(c if c.isprintable() else repr(c)[1:-1] for c in what)[:200]  # the JSON's text, on one line
    where = "model.json" if spec.folder else "the checkpoint"  # load_checkpoint prefixes the folder
    return DistillpruneError(f"{where} names Python code ({what}); {why}")


def _inside(folder: Path, name: Any) -> Path | None:
    """``folder / name`` when ``name`` is a relative path that stays inside ``folder`` (no ``..``, no link out)."""
    if not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    p = folder / name
    return p if p.resolve().is_relative_to(folder.resolve()) else None


def admitted(spec: ArchSpec) -> tuple[str, Path | None]:
    """Where the class of a stored ``source: python`` spec may be imported from under the current trust
    (``core.trust``): ``("module", None)`` for an installed module, ``("file", path)`` for a file; else a
    :class:`DistillpruneError` saying why not and what to do. Imports nothing."""
    ref = spec.ref or {}
    sha, attr = ref.get("sha256"), ref.get("attr")
    if not isinstance(attr, str) or not attr:
        raise _refuse(spec, "the checkpoint records no class (ref.attr)")
    if not isinstance(sha, str) or not sha:
        raise _refuse(spec, "it records no sha256 of that code, so it cannot be checked; it is not imported")
    trust = current_trust()
    if not (trust.trust_code or sha in trust.vouched):
        raise _refuse(
            spec,
            "loading it would run that code. If you trust this checkpoint, pass --trust-code "
            "(trust_code=True in Python); or pass base=<the unpruned model> to load_checkpoint",
        )
    if sha in trust.vouched:
        return _vouched(spec, trust.vouched[sha])
    places: list[Path] = []
    if spec.folder is not None:
        inside = _inside(spec.folder, ref.get("bundled"))
        places += [inside] if inside is not None else []
    for place in places:
        if place.is_file() and file_sha256(place) == sha:
            return "file", place
    if not places:
        raise _refuse(spec, "the code must be a .py file inside the checkpoint folder; it is not imported")
    raise _refuse(
        spec,
        f"no file with the recorded sha256 {sha[:12]} is there ({', '.join(str(p) for p in places)}); restore it "
        "or pass base=<the unpruned model> to load_checkpoint",
    )


def _vouched(spec: ArchSpec, place: str) -> tuple[str, Path | None]:
    """Where to import code the caller vouches for: the place the caller's own config names (its module, or
    its file when that still has the sha256), never a module or file the stored reference names; a reference
    that names other code than the caller's is refused."""
    ref = spec.ref or {}
    module = ref.get("module")
    if _is_file(place):
        if module is not None:
            raise _refuse(spec, f"the run's recipe names the file {place}, not a module; it is not imported")
        path = Path(place)
        if path.is_file() and file_sha256(path) == ref.get("sha256"):
            return "file", path
        raise _refuse(spec, f"{place} no longer has the recorded sha256; restore it or pass base=<the unpruned model>")
    if module != place:
        raise _refuse(spec, f"the run's recipe names the module {place!r}, not this one; it is not imported")
    return "module", None


@ARCH_BUILDERS.register("python")
def _from_spec(spec: ArchSpec) -> nn.Module:
    ref = spec.ref or {}
    if spec.trusted:  # built in this process from the caller's own config: its code is the caller's choice
        where = ref.get("module") or ref.get("file")
        factory, _ = resolve(f"{where}:{ref.get('attr')}")
        return call(factory, dict(spec.kwargs), spec.num_classes, f"{where}:{ref.get('attr')}")
    kind, path = admitted(spec)
    attr = str(ref["attr"])
    if kind == "module":  # the module the caller's own recipe names (admitted checked ref["module"] is it)
        factory, got = resolve(f"{ref['module']}:{attr}")
        if got.get("sha256") != ref["sha256"]:
            raise _refuse(spec, "the installed module's file differs from the one recorded (sha256); not used")
        target = f"{ref['module']}:{attr}"
    else:
        assert path is not None
        factory = _attr(_import_file(path.resolve(), str(ref["sha256"])), attr, str(path))
        _bundle(spec, path)  # a checkpoint saved from this model carries the same file
        target = f"{path}:{attr}"
    return call(factory, dict(spec.kwargs), spec.num_classes, target)
