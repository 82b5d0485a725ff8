"""The run folder's life cycle: checked before any work, marked as ours, re-runnable until a stage
completes, resumable after.

* ``run.json`` marks a folder as a distillprune run and records the recipe it started with; ``state.json``
  records the last completed stage (written last, after that stage's checkpoint and the report).
* A new run needs a new or empty folder, or a run folder of ours that never completed a stage (its
  leftovers are cleared and it starts again). A folder with completed stages needs ``--resume``.
* ``--resume`` continues after the last completed stage, with the recipe the run started with (stages not
  started yet may be changed or appended; ``name``, ``runtime`` and ``measure`` may change).
* Nothing is written through a symbolic link: ``--out`` itself may not be one, a link where the run writes
  (anywhere in a run folder of ours) is refused before any write, and every later write below the folder is
  checked level by level (``core.io.guard``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillprune.core.io import guard, loads, write_json
from distillprune.core.run_files import MARKER, RESERVED, RUN_FILES, STATE
from distillprune.errors import CheckpointError, DistillpruneError
from distillprune.pipeline.fingerprint import difference, fingerprint
from distillprune.pipeline.runlock import LOCK, acquire

if TYPE_CHECKING:
    from distillprune.recipes.schema import Recipe

FORMAT = "distillprune-run/1"
#: the empty file that shows the folder can be written (created with O_EXCL | O_NOFOLLOW, then removed)
PROBE = ".distillprune-write-test"
#: recipe sections that may change when resuming (how it runs and is measured, not what it computes)
MAY_CHANGE = ("name", "runtime", "measure")


class RunFolderError(DistillpruneError):
    """An ``--out`` folder that cannot hold this run (a file, not writable, another run's folder...)."""


def prepare(run_dir: str | Path | None, resume: bool, recipe: Recipe | None = None, force: bool = False) -> Path | None:
    """Check (and create) the run folder before any work, and lock it for this run (released by
    ``runlock.release_all``); see the module docstring for the rules. ``force``: write into a non-empty
    folder that is not a distillprune run (its files of the names a run writes are replaced)."""
    if run_dir is None:
        return None
    p = out_folder(run_dir)
    if p.exists() and not p.is_dir():
        raise RunFolderError(f"--out {p} is a file; expected a run folder (new, empty, or a run to --resume)")
    if resume:
        if not p.is_dir() or not is_run_folder(p):
            raise RunFolderError(f"--resume: no run to resume in {p} (no {MARKER} or {STATE})")
    elif p.is_dir() and _entries(p) and not is_ours(p) and not force:
        raise RunFolderError(
            f"run folder {p} already exists and is not empty, and is not a distillprune run folder (no "
            f"{MARKER} of ours); choose another --out, or pass --force to write into it"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create run folder {p}: {e.strerror or e}") from None
    guard(p)  # every write below p from now on: level by level, never through a link
    refuse_links(p, None if is_ours(p) or resume else _written_names(recipe))
    _check_writable(p)
    acquire(p)  # before anything is cleared or written: a second run into p stops here
    if resume and recipe is not None:
        check_same_recipe(p, recipe)
        check_same_data(p, recipe)
    elif not resume and is_ours(p):
        done = completed(p)
        if done:
            raise RunFolderError(
                f"run folder {p} already exists and holds a run with {done} completed stage(s); "
                "pass --resume to continue it or choose another --out"
            )
        _clear(p)  # a run that never completed a stage starts over, without ceremony
    if recipe is not None and not (resume and (p / MARKER).exists()):
        marker = {"format": FORMAT, "recipe": recipe.model_dump(mode="json"), "data": fingerprint(recipe.data.path)}
        write_json(p / MARKER, marker)
    return p


def is_ours(p: Path) -> bool:
    """Whether ``p`` holds the ``run.json`` of a distillprune run (other files of these names may be anyone's)."""
    try:
        return loads((p / MARKER).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_same_data(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume when the data file (or folder) at the recipe's path is not the one the run started on."""
    try:
        then = loads((run_dir / MARKER).read_text(encoding="utf-8")).get("data")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return  # check_same_recipe has judged the marker
    why = difference(then, fingerprint(recipe.data.path))
    if why is not None:
        raise RunFolderError(
            f"--resume: the data at {recipe.data.path} is not the data {run_dir} started with ({why}); "
            "resume with the same data, or start a new run"
        )


def is_run_folder(p: Path) -> bool:
    return (p / MARKER).is_file() or (p / STATE).is_file() or (p / "stages").is_dir()


def completed(p: Path) -> int:
    """How many stages the run in ``p`` completed (0 when none or no readable state)."""
    try:
        return int(loads((p / STATE).read_text(encoding="utf-8"))["completed"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def completed_stage(run_dir: Path) -> Path:
    """The checkpoint folder of the last stage ``state.json`` says completed (without the recipe: its name is
    checked to be one of ours, ``stages/NN_kind``, never a path read from the file)."""
    f = run_dir / STATE
    try:
        done = loads(f.read_text(encoding="utf-8"))
        index, kind = done["completed"], done["kind"]
        ok = isinstance(index, int) and not isinstance(index, bool) and 0 < index < 100
        if not ok or not isinstance(kind, str) or not kind.isidentifier():
            raise TypeError(f"expected {{'completed': 1..99, 'kind': <a stage type>}}, got {done!r}"[:200])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f}: corrupt run state ({e})") from None
    return run_dir / "stages" / f"{index:02d}_{kind}"


def read_state(run_dir: Path, recipe: Recipe) -> tuple[int, str] | None:
    """``(completed, kind)`` of ``state.json``, checked against the recipe; None when there is none."""
    f = run_dir / STATE
    if not f.exists():
        return None
    try:
        done = loads(f.read_text(encoding="utf-8"))
        index, kind = done["completed"], done["kind"]
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(kind, str):
            raise TypeError(f"expected {{'completed': <int>, 'kind': <str>}}, got {done!r}"[:200])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        why = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(
            f"{f}: corrupt run state ({why}); delete the run folder or choose another --out"
        ) from None
    n = len(recipe.stages)
    if not 0 <= index <= n:
        raise CheckpointError(
            f"{f}: says {index} stages completed but the recipe has {n}; resume with the recipe the run started with"
        )
    if index and recipe.stages[index - 1].type != kind:
        raise CheckpointError(
            f"{f}: stage {index} completed as '{kind}' but the recipe's stage {index} is "
            f"'{recipe.stages[index - 1].type}'; resume with the recipe the run started with"
        )
    return index, kind


def check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume with a recipe that computes something else than the one the run started with."""
    f = run_dir / MARKER
    if not f.is_file():
        return  # a run folder written before run.json existed
    try:
        old = loads(f.read_text(encoding="utf-8"))["recipe"]
        if not isinstance(old, dict):
            raise TypeError("'recipe' is not a mapping")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f}: corrupt run marker ({e}); delete the run folder or choose another --out") from None
    new = recipe.model_dump(mode="json")
    done = completed(run_dir)
    if any((run_dir / "stages").glob(f"{done + 1:02d}_*")):
        done += 1  # the stage in progress: its epoch checkpoints hold its options' results
    for key in sorted(set(old) | set(new)):
        if key in MAY_CHANGE:
            continue
        a, b = old.get(key), new.get(key)
        if key == "stages" and isinstance(a, list) and isinstance(b, list):
            a, b = a[:done], b[:done]  # stages not started yet may be changed or appended
        diff = _first_difference(a, b, key)
        if diff is not None:
            raise RunFolderError(
                f"--resume: the recipe differs from the one {run_dir} started with at {diff}; "
                "resume with the same recipe and --set values (name, runtime and measure may change)"
            )


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, f"{where}.{i}")
            if d is not None:
                return d
        return None
    return None if a == b else f"{where} ({a!r} then, {b!r} now)"[:300]


def _entries(p: Path) -> list[str]:
    try:
        return [e for e in os.listdir(p) if e != LOCK]  # a lock file left by a run killed before run.json
    except OSError as e:
        raise RunFolderError(f"run folder {p} cannot be read: {e.strerror or e}") from None


def _clear(p: Path) -> None:
    for name in RUN_FILES:
        f = p / name
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
        elif f.exists() or f.is_symlink():
            f.unlink()


def _check_writable(p: Path) -> None:
    probe = p / PROBE
    try:
        if probe.is_file() and not probe.is_symlink():
            probe.unlink()  # left by a run killed between the two lines below
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"run folder {p} is not writable: {e.strerror or e}") from None


def out_folder(run_dir: str | Path) -> Path:
    """The folder ``--out`` names, refusing one that is a symbolic link (``--force`` would write through it
    into the folder it points to). A path with ``..`` is resolved first, as the operating system would once
    its folders exist (``runs/none/../../fx`` is ``fx``), so the checks judge the folder the run would fill."""
    p = Path(run_dir)
    if ".." in p.parts:
        p = Path(os.path.realpath(p)) if p.name == ".." else Path(os.path.realpath(p.parent)) / p.name
    if p.is_symlink():
        raise RunFolderError(
            f"--out {p} is a symbolic link (to {os.readlink(p)}); give the folder itself, a run never writes "
            "through a link"
        )
    return p


def _written_names(recipe: Recipe | None) -> list[str]:
    """The top-level names a run writes in its folder (checked for links in a folder that is not ours)."""
    names = [*RESERVED, PROBE, "hf"]
    for st in recipe.stages if recipe is not None else []:
        out = st.output_file()
        if out:
            names.append(Path(out).parts[0])
    return names


def refuse_links(p: Path, names: list[str] | None, what: str = "run folder") -> None:
    """No symbolic link where a run writes: at ``names`` (and anything below them) in ``p``, or with
    ``names=None`` (a run folder of ours) anywhere in it. One :class:`RunFolderError` line naming the link."""
    tops = [p / n for n in names] if names is not None else [p]
    for top in tops:
        if top.is_symlink():
            raise _planted(p, top, what)
        if top != p and not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                if os.path.islink(os.path.join(folder, name)):
                    raise _planted(p, Path(folder) / name, what)


def _planted(p: Path, link: Path, what: str) -> RunFolderError:
    try:
        to = os.readlink(link)
    except OSError:
        to = "?"
    return RunFolderError(
        f"{what} {p}: {link.relative_to(p)} is a symbolic link (to {to}); distillprune never writes through "
        "a link: remove it or choose another --out"
    )
