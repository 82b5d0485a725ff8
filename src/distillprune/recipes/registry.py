"""The stage registry: each stage type is one module that registers its config class and its runner.

``@register_stage(MyStageConfig)`` on a runner ``(cfg, state, index) -> StageOutcome`` is all a new stage
needs: the recipe's stage union, ``distillprune list``, the README's stage table and the contract tests
are built from this registry. The config's ``type: Literal["name"]`` field names the stage.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distillprune.core.config import StrictModel, register_union_tags
from distillprune.core.registry import Registry
from distillprune.core.reporting import Deployed, Details


@dataclass
class StageOutcome:
    """What a stage runner returns: its typed report, the artefact it ships when that is not the float model
    (its report row then measures the artefact), and flags for its report row (said on the console and in
    report.md's flags, e.g. a plan outside its target band)."""

    details: Details | None = None
    deployed: Deployed | None = None
    flags: list[str] = field(default_factory=list)


#: ``run(stage_config, state, index) -> StageOutcome``; ``state`` is the pipeline's ``RunState``, a layer above
#: this registry (which the recipe schema reads), so it is not named here, not even for the type checker
Runner = Callable[[Any, Any, int], StageOutcome]


@dataclass(frozen=True)
class StageDef:
    name: str
    config: type[StrictModel]
    run: Runner
    measured: bool  # measure the model after the stage (accuracy, params, MACs, latency)

    @property
    def summary(self) -> str:
        """The first paragraph of the config's docstring: the stage's one-line description."""
        doc = (self.config.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


STAGES: Registry[StageDef] = Registry("stage")
#: the built-in stages, one module each, in pipeline order (the order of ``distillprune list stages`` and of the
#: README's table): declared, so listing them or reading a recipe's stage names imports none of them
for _stage in (
    "train",
    "distill",
    "prune",
    "prune_transformer",
    "finetune",
    "lowrank",
    "cluster",
    "quantize",
    "evaluate",
    "export",
):
    STAGES.declare(f"distillprune.pipeline.stages.{_stage}", _stage)


def stage_name(config: type[StrictModel]) -> str:
    field = config.model_fields.get("type")
    args = typing.get_args(field.annotation) if field is not None else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{config.__name__} needs a field type: Literal['<stage name>']")
    return args[0]


def register_stage(config: type[StrictModel], *, measured: bool = True) -> Callable[[Runner], Runner]:
    """Register ``config`` (whose ``type`` literal names the stage) with the decorated runner."""
    name = stage_name(config)

    def deco(run: Runner) -> Runner:
        STAGES.register(name)(StageDef(name, config, run, measured))
        register_union_tags(name)
        return run

    return deco
