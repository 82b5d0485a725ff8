"""Training progress a person can follow: a rich bar on a terminal; elsewhere (``nohup``, CI, a pipe) a plain
line -- stage, step/total, loss, img/s, ETA -- every ~30 s or 5 % of the steps, on stdout and in ``run.log``
(the ``distillprune.progress`` logger); and, either way, loss / lr / img/s as TensorBoard scalars every
``scalar_every`` steps. Disabled (tests, library calls), it does nothing.

Rate and ETA count from the end of the first step: the set-up before it (data to the device, the teacher
cache, a compile) and the first step's own warm-up are not training speed. The first line says how long the
wait for the first step was. (The other long phases of a run speak through ``core.progress``.)"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from distillprune.core.progress import clock_text as _clock
from distillprune.core.progress import say

#: ``scalars(tag, step, {"loss": ..., "lr": ..., "img_s": ...})``: where per-step scalars go (TensorBoard)
Scalars = Callable[[str, int, dict[str, float]], None]


@dataclass(frozen=True)
class Cadence:
    """How often a ``Tracker`` speaks: a plain line every ``every_s`` seconds or each ``share`` of the run,
    a TensorBoard scalar every ``scalar_every`` steps."""

    scalar_every: int = 50
    every_s: float = 30.0
    share: float = 0.05


class Tracker:
    """Counts steps, and says -- as a plain line, a TensorBoard scalar, or both -- how training goes."""

    def __init__(
        self,
        desc: str,
        total: int,
        done: int = 0,
        *,
        plain: bool = False,
        scalars: Scalars | None = None,
        cadence: Cadence | None = None,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.desc, self.total, self.done, self.start = desc, total, done, done
        c = cadence or Cadence()
        self.plain, self.scalars, self.scalar_every = plain, scalars, max(1, c.scalar_every)
        self.every_s, self.share = c.every_s, c.share
        self.write = write or say
        self.clock = clock
        self.t0 = self.last_t = self._mark_t = clock()
        self.last_step, self._mark_step = done, done
        self.images, self._mark_images = 0, 0
        self.first: tuple[float, int, int] | None = None  # (time, steps, images) at the end of the first step
        self.loss: float | None = None
        self.bar: Callable[[int], None] | None = None  # a terminal's rich bar, advanced with every step

    def __call__(self, n: int = 1, loss: torch.Tensor | float | None = None, lr: float | None = None, images: int = 0):
        self.done += n
        self.images += images
        if self.first is None:
            self.first = (self.clock(), self.done, self.images)
            self._mark_t, self._mark_images = self.first[0], self.images
        if self.bar is not None:
            self.bar(n)
        due_line = self.plain and self._line_due()
        due_scalar = self.scalars is not None and self.done % self.scalar_every == 0
        if (due_line or due_scalar) and loss is not None:
            self.loss = float(loss)  # read only when shown: reading a GPU tensor every step would synchronise
        if due_scalar and self.scalars is not None:
            values = {"img_s": self._rate(self._mark_t, self._mark_images)}
            values.update({k: v for k, v in (("loss", self.loss), ("lr", lr)) if v is not None})
            self.scalars(f"{self.desc}/steps", self.done, values)
            self._mark_t, self._mark_images = self.clock(), self.images
        if due_line or (self.plain and self.done >= self.total and self.last_step < self.total):
            self.write(self.line())
            self.last_t, self.last_step = self.clock(), self.done

    def _line_due(self) -> bool:
        since = self.clock() - self.last_t
        chunk = max(1, int(self.share * self.total))
        crossed = self.done // chunk > self.last_step // chunk
        return since >= self.every_s or (crossed and since >= 1.0) or self.done == self.start + 1

    def _rate(self, t: float, images: int) -> float:
        return (self.images - images) / max(self.clock() - t, 1e-9)

    def line(self) -> str:
        now = self.clock()
        elapsed = now - self.t0
        loss = "" if self.loss is None else f"  loss {self.loss:.4f}"
        head = f"{self.desc}  step {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%){loss}"
        if self.first is None or self.done == self.first[1]:  # nothing timed yet but the wait for a first step
            return f"{head}  first step after {_clock(elapsed)} (set-up included)  img/s and ETA from the next line"
        t1, done1, images1 = self.first
        eta = (now - t1) / (self.done - done1) * (self.total - self.done)
        return f"{head}  {self._rate(t1, images1):.0f} img/s  elapsed {_clock(elapsed)}  ETA {_clock(eta)}"


@contextmanager
def progress_bar(
    enabled: bool, desc: str, total: int, done: int = 0, scalars: Scalars | None = None
) -> Iterator[Tracker]:
    """The progress of ``total`` steps (``done`` already): a rich bar on a terminal, plain lines elsewhere;
    ``scalars`` receives per-step scalars either way (enabled or not)."""
    terminal = enabled and sys.stdout.isatty()
    tracker = Tracker(desc, total, done, plain=enabled and not terminal, scalars=scalars)
    if not terminal:
        yield tracker
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as prog:
        task = prog.add_task(desc, total=total, completed=done)
        tracker.bar = lambda n: prog.advance(task, n)
        yield tracker
