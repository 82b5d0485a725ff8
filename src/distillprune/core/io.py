"""Atomic file writes: a crash leaves the old file or the new one, never half of either; and writes that never
follow a symbolic link someone planted.

A file is never written through a link: ``atomic_write`` creates its temporary file with ``O_EXCL`` (mkstemp)
and refuses a target that is a link, ``open_append`` opens with ``O_NOFOLLOW``. Below a *guarded* folder (a
run or tune folder, :func:`guard`), every folder between it and the file is checked with ``lstat`` and
created one level at a time, so a link planted as ``stages/02_finetune`` cannot send a checkpoint into a
user's folder: each is one :class:`UnsafePathError` line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from distillprune.errors import DistillpruneError


class UnsafePathError(DistillpruneError):
    """A write that would go through a symbolic link (or into something that is not a folder)."""


_GUARDED: set[str] = set()  # absolute paths of the folders whose writes are checked level by level


def guard(folder: str | os.PathLike) -> None:
    """From now on, check every write below ``folder`` level by level (see the module docstring)."""
    _GUARDED.add(os.path.abspath(folder))


def _guarded_root(path: str) -> str | None:
    roots = [r for r in _GUARDED if path == r or path.startswith(r.rstrip(os.sep) + os.sep)]
    return max(roots, key=len, default=None)


def _link_error(path: str | os.PathLike, root: str | None) -> UnsafePathError:
    try:
        to = f" (to {os.readlink(os.fspath(path))})"
    except OSError:
        to = ""
    where = f" in {root}" if root else ""
    return UnsafePathError(
        f"{path} is a symbolic link{to}{where}; distillprune never writes through a link: remove it"
        + (" or choose another --out" if root else "")
    )


def refuse_link(path: str | os.PathLike) -> None:
    """Raise :class:`UnsafePathError` when ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise _link_error(path, _guarded_root(os.path.abspath(path)))


def safe_mkdir(folder: str | os.PathLike) -> Path:
    """``folder`` and its missing parents, as ``mkdir(parents=True, exist_ok=True)``; below a guarded folder
    each level is checked with ``lstat`` (a link or a file there is one :class:`UnsafePathError` line)."""
    folder = Path(folder)
    full = os.path.abspath(folder)
    root = _guarded_root(full)
    if root is None:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    current = root
    for part in Path(os.path.relpath(full, root)).parts if full != root else ():
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise _link_error(current, root)
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"{current} is a file in {root}; expected a folder")
    return folder


def refuse_links_in(folder: str | os.PathLike) -> None:
    """``folder`` (created, checked as :func:`safe_mkdir`) holds no symbolic link: for a library that writes
    files of its own names into it (``save_pretrained``)."""
    safe_mkdir(folder)
    with os.scandir(os.fspath(folder)) as entries:
        for e in entries:
            if e.is_symlink():
                raise _link_error(e.path, _guarded_root(os.path.abspath(folder)))


def open_append(path: str | os.PathLike) -> IO[str]:
    """``path`` opened for appending text, created if missing, never through a link (``O_NOFOLLOW``)."""
    path = Path(path)
    safe_mkdir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _link_error(path, _guarded_root(os.path.abspath(path))) from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` (its return value is ignored), fsync, then rename over ``path``; a ``path`` that
    is a symbolic link is refused (see the module docstring)."""
    path = Path(path)
    safe_mkdir(path.parent)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file should get the mode open() would give
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


PACKAGE_PREFIX = "package:"


def resolve_folder(path: str, where: str) -> Path:
    """A folder, or ``package:NAME/sub/dir``: a folder shipped inside an installed Python package (a model
    packaged for offline use). ``where`` names the option in the error."""
    import importlib.util

    if path.startswith(PACKAGE_PREFIX):
        name, _, sub = path[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(name) if name else None
        if spec is None or not spec.submodule_search_locations:
            raise DistillpruneError(f"{where} {path!r}: no installed package {name!r} (pip install it)")
        p = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        p = Path(path).expanduser()
    if not p.is_dir():
        raise DistillpruneError(f"{where}: no folder {p}")
    return p


#: JSON files of ours nest a few levels; a file nested deeper is not ours (and json's recursive decoder would
#: overflow the stack on 20,000 levels, an internal error instead of one line)
MAX_JSON_DEPTH = 100
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def loads(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` with a ``json.JSONDecodeError`` (so callers
    that already handle damaged JSON handle this too), before the recursive decoder sees it."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > max_depth:
                raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, m.start())
        elif c in "]}":
            depth -= 1
    return json.loads(text)


#: the safetensors dtypes distillprune computes with (float8, float4, complex... are refused by name)
SAFETENSORS_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})
#: a safetensors header larger than this is not a header of ours (the format's own limit is 100 MB)
MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors(path: str | os.PathLike, where: str) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file, after its header is checked: readable JSON, each tensor named
    once (the format's reader would keep one of two tensors of one name), of a dtype distillprune computes
    with; then :func:`check_tensors`. Each failure is one ``CheckpointError`` line naming ``where``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from distillprune.errors import CheckpointError

    header = _safetensors_header(Path(path), where)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{where}: tensor {name!r:.80} has dtype {str(dtype)!r:.20}; expected one of "
                f"{', '.join(sorted(SAFETENSORS_DTYPES))} (float8 and other storage formats are not computed with)"
            )
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from None
    check_tensors(tensors, where)
    return tensors


def _safetensors_header(path: Path, where: str) -> dict[str, Any]:
    from distillprune.errors import CheckpointError

    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > MAX_SAFETENSORS_HEADER or size > os.fstat(f.fileno()).st_size - 8:
                raise ValueError(f"a header of {size} bytes")
            raw = f.read(size)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from None

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"the name {k!r:.80} appears twice")
            seen[k] = v
        return seen

    try:
        loads(raw)  # the depth check, before the pairs hook builds anything
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: corrupt safetensors header (a {type(header).__name__}, expected a mapping)")
    return header


def check_tensors(tensors: dict[str, Any], where: str) -> None:
    """Refuse a state dict with a tensor of a dtype distillprune does not compute with (float8, complex...) or
    a NaN or infinite floating-point weight: every number computed from it (accuracy, exported outputs)
    would be garbage reported with exit 0."""
    import torch

    from distillprune.errors import CheckpointError

    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.dtype not in _TORCH_DTYPES():
            raise CheckpointError(
                f"{where}: weight {name!r:.80} is {str(t.dtype).removeprefix('torch.')}; expected a float (64, 32, "
                "16, bfloat16), integer or bool tensor (float8 and other storage formats are not computed with)"
            )
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{where}: weight {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}")


def _TORCH_DTYPES() -> frozenset[Any]:  # noqa: N802 - a constant, built when torch is imported
    import torch

    return frozenset(
        {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16}
        | {torch.int8, torch.uint8, torch.bool}
    )
