"""Run logs: one JSON object per line (metrics.jsonl) and, when available, TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distillprune.core.io import open_append, safe_mkdir
from distillprune.train.distributed import is_rank0

#: called with (tag, step, values) for every record logged, in the order registered (see ``listen``)
_LISTENERS: list[Callable[[str, int, dict[str, Any]], None]] = []


@contextmanager
def listen(fn: Callable[[str, int, dict[str, Any]], None]) -> Iterator[None]:
    """Call ``fn(tag, step, values)`` for every record any ``RunLogger`` logs while the block runs (each
    epoch of each training stage), after the record is written. An exception from ``fn`` propagates out of
    the training loop: that is how ``distillprune tune`` stops a trial its pruner gave up on."""
    _LISTENERS.append(fn)
    try:
        yield
    finally:
        _LISTENERS.remove(fn)


class RunLogger:
    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True):
        if not is_rank0():  # under torchrun rank 0 logs for all (metrics are already summed over ranks)
            run_dir = None
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir else None
        self._tb = None
        if self.path is not None:
            safe_mkdir(self.path.parent)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(safe_mkdir(self.path.parent / "tb")))
                except ImportError:  # tensorboard is a dependency, but a trimmed install may lack it
                    self._tb = None

    def log(self, tag: str, step: int, values: dict[str, Any]) -> None:
        self._write(tag, step, values)
        for fn in list(_LISTENERS):
            fn(tag, step, values)

    def _write(self, tag: str, step: int, values: dict[str, Any]) -> None:
        if self.path is None:
            return
        rec = {"time": round(time.time(), 3), "tag": tag, "step": step, **values}
        with open_append(self.path) as f:  # never through a link planted as metrics.jsonl
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{tag}/{k}", v, step)

    def scalars(self, tag: str, step: int, values: dict[str, float]) -> None:
        """Per-step scalars (loss, lr, img/s): TensorBoard only -- ``metrics.jsonl`` keeps one record per epoch."""
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{tag}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def attach_run_log(run_dir: str | Path | None) -> Callable[[], None]:
    """Send the library's diagnostics (the ``distillprune`` loggers: exporter output, ...) to ``run_dir/run.log``
    for the duration of a run; returns the function that detaches it."""
    if run_dir is None:
        return lambda: None
    lib = logging.getLogger("distillprune")
    handler = logging.StreamHandler(open_append(Path(run_dir) / "run.log"))  # never through a planted link
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    level = lib.level
    lib.addHandler(handler)
    lib.setLevel(logging.DEBUG)

    def detach() -> None:
        lib.removeHandler(handler)
        lib.setLevel(level)
        handler.close()
        handler.stream.close()

    return detach
