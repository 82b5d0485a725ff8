"""The CLI's one error boundary: whatever happens, the user gets one line on stderr and a known exit code.

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      done
1      an internal error (a bug in distillprune): one line, and the full traceback written to
       ``<run folder>/error.log`` when a run folder exists, else to a temporary file
2      bad input the user can fix: recipe, ``--set``, data, checkpoint, run folder, usage (unknown
       command or option, missing argument), a NaN loss, the user's own model code raising (the line
       names their file and line; the traceback goes where a bug's would); one line saying what was
       received, what was expected and where
130    interrupted (Ctrl-C or SIGTERM), also while starting or exiting: one line saying how to resume; the
       last completed checkpoint is intact
141    the reader of stdout went away (``distillprune list | head -c1``): nothing more is printed
=====  ==========================================================================================

A full disk or a file over ``ulimit -f`` is exit 2: "no space left on the device holding RUN", resumable.

stderr carries only that line; Python warnings are printed to stdout as one ``warning: ...`` line each. Text
in these lines comes partly from files (a lock's contents, folder names, keys): control characters in it are
printed escaped (``\x1b``), never raw to the terminal. A command never reads stdin: it is an empty stream while
the command runs, so no library can stop to ask a question there.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from distillprune import _process
from distillprune.errors import DistillpruneError, printable

EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141
#: errno of a write the disk or the file size limit refused (ENOSPC, EFBIG, EDQUOT)
NO_SPACE = frozenset(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT") if hasattr(errno, n))
#: how libraries that wrap the error (safetensors, onnx, torch) spell it
NO_SPACE_TEXT = ("No space left on device", "File too large", "Disk quota exceeded", "StorageFull")


class _Current:
    """What the boundary needs to know about the command in progress (set by the CLI's commands)."""

    run_dir: Path | None = None
    resume_command: list[str] | None = None


current = _Current()


def note_run(run_dir: Path, resume_command: list[str]) -> None:
    """Tell the boundary where the command's run folder is and which command resumes it."""
    current.run_dir, current.resume_command = Path(run_dir), resume_command


def interrupted_message() -> str:
    run, cmd = current.run_dir, current.resume_command
    if run is None or cmd is None or not (run / "run.json").is_file():
        return _process.NOTHING_TO_RESUME
    return f"interrupted; completed stages and epochs are saved in {run}; resume with: {shlex.join(cmd)}"


_process.state.interrupted = interrupted_message  # type: ignore[method-assign]  # (set once, here)


def one_line(text: str) -> str:
    """``text`` on one line (messages quoting library errors can span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


# typer >= 0.20 vendors click (typer._click); older versions use click itself. Find the exception bases
# through typer's public names, so neither click nor a private module is imported.
def _base(cls: type[Exception], name: str) -> type[Any]:  # an Exception class with click's methods
    return next((c for c in cls.__mro__ if c.__name__ == name), cls)


_CLICK_ERROR = _base(typer.BadParameter, "ClickException")
_USAGE_ERROR = _base(typer.BadParameter, "UsageError")


def _usage_line(e: Any) -> str:
    ctx = getattr(e, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None and isinstance(e, _USAGE_ERROR) else ""
    return f"error: {one_line(e.format_message())}{where}"


def run_cli(app: Callable[..., Any], argv: list[str] | None) -> int:
    """Run the typer ``app`` on ``argv`` (``sys.argv[1:]`` if None) inside the boundary; returns the exit code."""
    current.run_dir = current.resume_command = None
    _process.state.in_command = True
    stdin, sys.stdin = sys.stdin, open(os.devnull, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        return _run(app, argv)
    finally:
        sys.stdin.close()
        sys.stdin = stdin
        _process.state.in_command = False


def _run(app: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        with _warnings_to_stdout():
            rv = app(args=argv, prog_name="distillprune", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        _process.silence_stdout()
        return EXIT_PIPE
    except SystemExit as e:  # typer turns a write to a closed pipe (EPIPE) into exit 1, stdout wrapped
        if type(sys.stdout).__name__ != "PacifyFlushWrapper":
            raise
        _process.silence_stdout()
        return EXIT_PIPE if e.code == 1 else int(e.code or 0)
    except DistillpruneError as e:
        return _say(f"error: {one_line(str(e)) or type(e).__name__}", EXIT_USER)
    except KeyboardInterrupt:
        return _say(interrupted_message(), EXIT_INTERRUPTED)
    except _CLICK_ERROR as e:  # usage: unknown command or option, missing argument, bad option value
        if type(e).__name__ == "NoArgsIsHelpError":  # the help text (typer's rich help printed it already)
            if e.format_message().strip():
                typer.echo(e.format_message())
            return _say("error: no command given (the commands are listed above)", EXIT_USER)
        return _say(_usage_line(e), EXIT_USER)
    except typer.Exit as e:  # --help, or a command that exits with a code
        return int(getattr(e, "exit_code", 0) or 0)
    except typer.Abort:
        return _say(interrupted_message(), EXIT_INTERRUPTED)
    except ValidationError as e:  # a config built from user values outside the recipe path
        from distillprune.core.config import one_line as first_error

        return _say(f"error: {one_line(first_error(e))}", EXIT_USER)
    except MemoryError:
        return _say("error: out of memory; lower data.batch_size or use a smaller model or data.limit_train", EXIT_USER)
    except OSError as e:  # the file system refused: permissions, a full disk, a path that is a folder...
        if _no_space(e):
            return _say(_no_space_line(e), EXIT_USER)
        if e.filename is not None or e.strerror:
            return _say(f"error: {_os_line(e)}", EXIT_USER)
        return _internal(e)
    except Exception as e:  # noqa: BLE001 - the boundary: anything else is a bug, reported with its trace
        if _no_space(e):  # a library's own error type around the refused write
            return _say(_no_space_line(e), EXIT_USER)
        frame = user_frame(e)
        if frame is not None:  # raised by the user's own model code (model.python): theirs to fix
            return _user_code(e, frame)
        return _internal(e)
    if rv == EXIT_INTERRUPTED:  # typer turns a KeyboardInterrupt into Exit(130), returned as the result
        return _say(interrupted_message(), EXIT_INTERRUPTED)
    return rv if isinstance(rv, int) else EXIT_OK


def _no_space(e: BaseException) -> str | None:
    """Why ``e`` (or what it was raised from) is a write refused for want of space or over the size limit:
    'disk full', 'file size limit (ulimit -f) reached', or None when it is something else."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = cur.errno if isinstance(cur, OSError) else None
        if code == errno.EFBIG or "File too large" in str(cur):
            return "file size limit (ulimit -f) reached"
        if code in NO_SPACE or any(t in str(cur) for t in NO_SPACE_TEXT):
            return "disk full"
        cur = cur.__cause__ or cur.__context__
    return None


def _no_space_line(e: BaseException) -> str:
    run, cmd = current.run_dir, current.resume_command
    where = str(run) if run is not None else (getattr(e, "filename", None) or "the output")
    how = f"; free space (or raise ulimit -f) and resume with: {shlex.join(cmd)}" if run and cmd else ""
    return f"error: no space left on the device holding {where} ({_no_space(e)}){how}"


def _say(line: str, code: int) -> int:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    rank = os.environ.get("RANK", "0")  # under torchrun every rank reports; rank 0 without a prefix
    line = printable(line)
    print(line if rank == "0" else f"rank {rank}: {line}", file=sys.stderr, flush=True)
    return code


def _os_line(e: OSError) -> str:
    what = e.strerror or type(e).__name__
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{files}: {what}" if files else what


#: the module names ``models.user`` gives the files a recipe names as ``model.python`` (path/to/file.py:Name)
USER_MODULE_PREFIX = "distillprune_user_"


def user_frame(e: BaseException) -> traceback.FrameSummary | None:
    """The deepest frame of ``e``'s traceback in the user's own model file (``model.python``), when that
    code raised the error: no frame of distillprune below it (libraries it called, torch say, may be)."""
    found = None
    tb = e.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(USER_MODULE_PREFIX):
            code = tb.tb_frame.f_code
            found = traceback.FrameSummary(code.co_filename, tb.tb_lineno, code.co_name, lookup_line=False)
        elif module == "distillprune" or module.startswith("distillprune."):
            found = None  # distillprune's code ran below the user's: whatever raised, it is ours
        tb = tb.tb_next
    return found


def _user_code(e: BaseException, fs: traceback.FrameSummary) -> int:
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    path = _write_trace(text)
    where = f"full traceback in {path}" if path else "the traceback could not be written anywhere"
    summary = one_line(f"{type(e).__name__}: {e}")[:300]
    return _say(f"error: your code raised {summary} at {fs.filename}:{fs.lineno} (in {fs.name}); {where}", EXIT_USER)


def _internal(e: BaseException) -> int:
    """A bug: one line naming it and the file that holds the full traceback."""
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    path = _write_trace(text)
    where = f"full traceback in {path}" if path else "the traceback could not be written anywhere"
    summary = one_line(f"{type(e).__name__}: {e}")[:300]
    return _say(f"internal error (a bug in distillprune, please report it): {summary}; {where}", EXIT_BUG)


def _write_trace(text: str) -> Path | None:
    run = current.run_dir
    if run is not None and (run / "run.json").is_file():  # a run folder of ours, not any folder
        try:  # never through a link planted at error.log (O_NOFOLLOW): then a temporary file below
            fd = os.open(run / "error.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(text)
            return run / "error.log"
        except OSError:
            pass
    try:
        fd, name = tempfile.mkstemp(prefix="distillprune-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return Path(name)
    except OSError:
        return None


class _warnings_to_stdout:
    """Python warnings as one ``warning: ...`` line on stdout, so stderr holds only the error line."""

    def __enter__(self) -> None:
        self._saved = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            try:
                print(f"warning: {printable(one_line(str(message)))}", file=sys.stdout, flush=True)
            except (OSError, ValueError):
                pass

        warnings.showwarning = show

    def __exit__(self, *exc: object) -> None:
        warnings.showwarning = self._saved
