"""What a model family plugs into the prune-while-distilling session: its ``Structure``.

:class:`~distillprune.prune.session.PruneSession` owns everything that does not depend on the family -- the
teacher, the objective, the calibration batches, the order of the steps, the trainer, rank-0 decisions and
their replay under ``torchrun``, the history and the report's training summary. A ``Structure`` owns what
is cut and how:

* ``plan()``: with a target, search what to cut (run on rank 0 alone; its plan, a dataclass of
  ``plan_type``, reaches every rank as JSON and is handed to ``use_plan``);
* ``cut(k)``: step ``k``'s structural change (run on rank 0 alone; every change is recorded as a history op
  through ``session.record``, which the other ranks replay);
* ``settle(k)``: what every rank does after the cut from data every rank holds alike (BatchNorm
  re-estimation, magnitude masks);
* ``finish()``: the family's report.

A family registers its structure by its config type with ``@structure_for_config(Config)`` (``STRUCTURES``, keyed
by the config class's name); ``prune_``, the stage and the session find it with :func:`structure_type` (a stage's
config subclasses the family's, so the lookup walks the class's MRO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.config import validate
from distillprune.core.registry import Registry
from distillprune.core.reporting import Details
from distillprune.errors import DistillpruneError

if TYPE_CHECKING:
    from distillprune.core.batch import Batch
    from distillprune.core.history import HistoryOp
    from distillprune.data.base import DataBundle
    from distillprune.distill.config import DistillConfig
    from distillprune.measure.latency import LatencyConfig
    from distillprune.prune.config import SessionConfig


class Session(Protocol):
    """What a structure may use of the session (``prune.session.PruneSession``)."""

    model: nn.Module
    cfg: SessionConfig  # the family's config (a structure narrows it to its own type)
    data: DataBundle | None
    example: torch.Tensor | None  # the calibration batch without data
    teacher: nn.Module | None
    device: torch.device
    input_shape: tuple[int, ...]
    num_classes: int
    latency: LatencyConfig | None
    batch_size: int
    seed: int

    def record(self, op: HistoryOp) -> None: ...

    def calibration(self, samples: int) -> list[tuple[Batch, torch.Tensor | None]]: ...


class Structure:
    """Base of a family's structure; ``session`` is the session it cuts for."""

    #: the dataclass ``plan()`` returns (rebuilt from JSON on the ranks that did not plan)
    plan_type: ClassVar[type | None] = None
    #: the config type it is registered for (``structure_for_config``)
    config: ClassVar[type[BaseModel]]

    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def check(cls, model: nn.Module, cfg: BaseModel, data: DataBundle | None) -> None:
        """Refuse, in one line, a model or a data set this family cannot prune (before any work)."""

    def distill_config(self) -> DistillConfig | None:
        """The KD options of the objective (a family may pick a task's default loss)."""
        return self.session.cfg.distill

    def plan(self) -> Any | None:
        """With a target, the plan that reaches it (rank 0 only); None without one."""
        return None

    def use_plan(self, plan: Any) -> None:
        """Take the plan (every rank)."""

    def before_cut(self, k: int) -> None:
        """Before step ``k``'s cut, on every rank (e.g. keep the model as it is, for recovery to match)."""

    def cut(self, k: int) -> None:
        raise NotImplementedError

    def settle(self, k: int) -> None:
        """After step ``k``'s cut, on every rank."""

    def on_train_step(self) -> Callable[[nn.Module], None] | None:
        """Called after every optimiser step of the training between cuts (e.g. re-applying masks)."""
        return None

    def finish(self) -> Details:
        raise NotImplementedError

    @property
    def report(self) -> Details:
        raise NotImplementedError


#: config class name -> the structure that prunes it (CNN channels and blocks; encoder heads, FFN and layers)
STRUCTURES: Registry[type[Structure]] = Registry("prune structure")


def structure_for_config(config: type[BaseModel]) -> Callable[[type[Structure]], type[Structure]]:
    """Register a structure for ``config`` (and its subclasses, e.g. the stage's config); a clash is an error."""

    def register(cls: type[Structure]) -> type[Structure]:
        STRUCTURES.register(config.__name__)(cls)
        cls.config = config
        return cls

    return register


def structure_type(cfg: BaseModel) -> type[Structure]:
    """The registered structure of ``cfg``'s type (or of the nearest registered base class)."""
    for klass in type(cfg).__mro__:
        if klass.__name__ in STRUCTURES and STRUCTURES.get(klass.__name__).config is klass:
            return STRUCTURES.get(klass.__name__)
    raise DistillpruneError(
        f"no structure prunes a {type(cfg).__name__}: registered are {', '.join(STRUCTURES.in_order())}"
    )


def config_of(cfg: BaseModel | dict[str, Any], default: type[BaseModel]) -> Any:
    """A config as given, or a dict validated by the first registered config that has all its keys.

    The CNN's ``PruneConfig`` registers first, so a dict that fits both families (only shared keys such
    as ``steps`` or ``target``) is a CNN's, as it always was; a dict that fits none is validated as
    ``default``, whose error names the nearest valid key."""
    if isinstance(cfg, BaseModel):
        return cfg
    configs = [STRUCTURES.get(n).config for n in STRUCTURES.in_order()]
    fitting = [c for c in configs if set(cfg) <= set(c.model_fields)]
    return validate(fitting[0] if fitting else default, cfg, where="prune config")
