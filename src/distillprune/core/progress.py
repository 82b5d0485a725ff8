"""What a run says while it works: a line for every phase that lasts longer than ~10 s, and the decisions worth a
line as they are made -- on stdout and in ``run.log`` (the ``distillprune.progress`` logger), on a terminal or
not.

The library marks its long phases and says its decisions; whether anything is printed is the run's choice
(:func:`talking`, which the pipeline enters for each stage on rank 0 with ``runtime.progress`` on)::

    @phase("scoring blocks", unit="evaluations")    # or: with phase("exporting ONNX"):
    def greedy(...):
        ...
        tick()                                       # one more done (expect(n) first gives the total)

    note("candidate depth 0.2 width 0.40: 2.10x measured")

A phase prints nothing when it ends within ``first_after`` seconds; past that a watcher thread prints its line
(``2:prune  cut 1/2 / scoring blocks  12 evaluations  elapsed 0:14``, with the share done and an ETA when the
phase knows its total) every ``every`` seconds, and the phase ends with ``... done in 0:42``. Outside
:func:`talking` a phase does nothing and a note only goes to the log.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger("distillprune.progress")
F = TypeVar("F", bound=Callable[..., Any])
#: a phase says nothing when it ends within FIRST_AFTER seconds; past that, a line every EVERY seconds
FIRST_AFTER, EVERY = 10.0, 30.0


def say(line: str) -> None:
    """A line on stdout and in the ``distillprune.progress`` log (a run's ``run.log``)."""
    print(line, flush=True)
    log.info(line)


def clock_text(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Phase:
    def __init__(self, what: str, unit: str, total: int | None, t0: float):
        self.what, self.unit, self.total, self.t0 = what, unit, total, t0
        self.done = 0
        self.said: float | None = None  # when its last line was printed


class _Talk:
    """The state of the process's talk: the stage it speaks for, the open phases (innermost last), the watcher."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enabled = False
        self.stage = ""
        self.phases: list[_Phase] = []
        self.first_after, self.every = FIRST_AFTER, EVERY
        self.write: Callable[[str], None] = say
        self.clock: Callable[[], float] = time.monotonic

    def prefix(self) -> str:
        return f"{self.stage}  " if self.stage else ""

    def line(self, now: float) -> str | None:
        """The line the innermost phase is due to print at ``now`` (and mark it said), or None."""
        with self.lock:
            if not self.phases:
                return None
            p = self.phases[-1]
            age = now - p.t0
            if age < self.first_after or (p.said is not None and now - p.said < self.every):
                return None
            p.said = now
            path = " / ".join(q.what for q in self.phases)
        unit = f" {p.unit}" if p.unit else ""
        if p.total:
            eta = clock_text(age / p.done * (p.total - p.done)) if p.done else "?"
            counts = f"  {p.done}/{p.total}{unit} ({100 * p.done / p.total:.0f}%)"
            return f"{self.prefix()}{path}{counts}  elapsed {clock_text(age)}  ETA {eta}"
        counts = f"  {p.done}{unit}" if p.done else ""
        return f"{self.prefix()}{path}{counts}  elapsed {clock_text(age)}"


talk = _Talk()


@contextmanager
def talking(
    stage: str = "",
    *,
    enabled: bool = True,
    first_after: float | None = None,
    every: float | None = None,
    write: Callable[[str], None] = say,
) -> Iterator[None]:
    """Within it, phases that last past ``first_after`` seconds (``FIRST_AFTER``) print a line every ``every``
    seconds (``EVERY``) and notes are printed, each prefixed with ``stage`` (``2:prune``). ``enabled=False``
    leaves the run silent."""
    if not enabled:
        yield
        return
    first_after = FIRST_AFTER if first_after is None else first_after
    every = EVERY if every is None else every
    saved = (talk.enabled, talk.stage, talk.first_after, talk.every, talk.write)
    talk.enabled, talk.stage, talk.first_after, talk.every, talk.write = True, stage, first_after, every, write
    stop = threading.Event()
    period = max(0.01, min(1.0, first_after / 4, every / 4))
    watcher = threading.Thread(target=_watch, args=(stop, period), daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        talk.enabled, talk.stage, talk.first_after, talk.every, talk.write = saved


def _watch(stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        text = talk.line(talk.clock())
        if text is not None:
            talk.write(text)


class phase:
    """A long phase of the work: a context manager, or a decorator of the function that does it."""

    def __init__(self, what: str, *, unit: str = "", total: int | None = None):
        self.what, self.unit, self.total = what, unit, total

    def __enter__(self) -> phase:
        if talk.enabled:
            with talk.lock:
                talk.phases.append(_Phase(self.what, self.unit, self.total, talk.clock()))
        return self

    def __exit__(self, *exc: object) -> None:
        if not talk.enabled:
            return
        with talk.lock:
            p = talk.phases.pop() if talk.phases else None
        if p is not None and exc[0] is None and (p.said is not None or talk.clock() - p.t0 >= talk.first_after):
            talk.write(f"{talk.prefix()}{p.what}: done in {clock_text(talk.clock() - p.t0)}")

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with phase(self.what, unit=self.unit, total=self.total):
                return fn(*args, **kwargs)

        return wrapped  # type: ignore[return-value]


def expect(total: int) -> None:
    """The innermost phase has ``total`` things to do (its lines then give the share done and an ETA)."""
    if talk.enabled:
        with talk.lock:
            if talk.phases:
                talk.phases[-1].total = total


def tick(n: int = 1) -> None:
    """The innermost phase did ``n`` more."""
    if talk.enabled:
        with talk.lock:
            if talk.phases:
                talk.phases[-1].done += n


def note(message: str) -> None:
    """A decision worth a line as it is made (a planner candidate, the chosen plan): printed while talking,
    always in the log (``run.log``)."""
    if talk.enabled:
        talk.write(f"{talk.prefix()}{message}")
    else:
        log.info(message)
