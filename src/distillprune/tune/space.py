"""The search space: recipe paths (the dotted paths of ``--set``) with one distribution each, read strictly
and checked against the recipe before any trial runs.

```yaml
stages.1.distill.losses.0.temperature: {float: [1, 8], log: true}
stages.1.optimizer.lr: {float: [0.01, 0.2], log: true}
stages.1.steps: {int: [1, 3]}
stages.1.width.ratio: {float: [0.3, 0.6], step: 0.1}
stages.1.distill.losses: {categorical: [[{name: kd}], [{name: kd}, {name: dkd}]]}
```

Every value a trial can draw goes through the recipe's own override path (``apply_overrides``, then the
strict schema): the ends of each numeric range and every categorical choice are built as recipes up front,
so an unknown path (with the nearest valid key) or a value the schema refuses is one line before any work.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillprune.core.config import validate
from distillprune.core.registry import nearest
from distillprune.errors import RecipeError
from distillprune.recipes.schema import Recipe, apply_overrides
from distillprune.recipes.yaml_io import parse_yaml, read_text

if TYPE_CHECKING:
    import optuna

KINDS = ("float", "int", "categorical")
OPTIONS = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}
#: paths ``tune`` sets itself on every trial (the hold-out split, the budget, the validation loss)
OWNED = ("data.validation_split", "data.limit_train", "data.limit_test", "runtime.val_loss")
_PRIMITIVE = (type(None), bool, int, float, str)


class SpaceError(RecipeError):
    """A search space that names a path the recipe lacks, a bad distribution, or a value the schema refuses."""


@dataclass(frozen=True)
class Param:
    """One searched recipe value: ``kind`` is float, int or categorical."""

    path: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def encoded(self) -> bool:
        """Whether the choices go to Optuna as JSON text (it stores only None, bool, int, float, str)."""
        return any(not isinstance(c, _PRIMITIVE) for c in self.choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this value for ``trial`` (the recipe's value, decoded)."""
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        labels = [json.dumps(c, sort_keys=True) for c in self.choices] if self.encoded else list(self.choices)
        return self.decode(trial.suggest_categorical(self.path, labels))

    def decode(self, stored: Any) -> Any:
        """The recipe value of what Optuna stored for this parameter."""
        return json.loads(stored) if self.kind == "categorical" and self.encoded else stored

    def probes(self) -> list[tuple[str, Any]]:
        """(what, value) pairs that stand for every value this can draw: the ends of a range (the schema's
        bounds are intervals), every choice."""
        if self.kind == "categorical":
            return [(f"choice {i}", c) for i, c in enumerate(self.choices)]
        cast = int if self.kind == "int" else float
        return [("the low end", cast(self.low)), ("the high end", cast(self.high))]


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str = "space"

    def paths(self) -> list[str]:
        return [p.path for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        """The space as data (stored with the study: a resumed search must search the same space)."""
        return {p.path: _spec(p) for p in self.params}


def load_space(space: str | Path | dict[str, Any]) -> Space:
    """A space from a YAML file or a mapping; every entry's distribution checked (one-line ``SpaceError``)."""
    if isinstance(space, dict):
        raw, source = space, "space"
    else:
        source = str(space)
        try:
            raw = parse_yaml(read_text(space), source)
        except RecipeError as e:
            raise SpaceError(str(e).replace("recipe", "space file", 1)) from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: a space is a non-empty mapping of recipe paths to distributions")
    return Space(tuple(parse_param(str(k), v, source) for k, v in raw.items()), source)


def parse_param(path: str, entry: object, source: str) -> Param:
    """One entry of the space file (``entry``: its YAML value) as a checked ``Param``."""
    where = f"{source}: {path}"
    if path in OWNED or any(path.startswith(o + ".") for o in OWNED):
        raise SpaceError(f"{where}: tune sets this itself on every trial (the hold-out split and the budget)")
    if path.split(".")[-1] == "type":
        raise SpaceError(f"{where}: a stage's type cannot be searched; search its options")
    if not isinstance(entry, dict) or not entry:
        raise SpaceError(f"{where}: expected one distribution like {{float: [1, 8], log: true}}; got {entry!r}")
    spec: dict[str, Any] = entry
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        unknown = next((str(k) for k in spec if k not in KINDS and k not in ("log", "step")), None)
        hint = f"unknown distribution '{unknown}'{nearest(unknown, list(KINDS))}; " if unknown else ""
        raise SpaceError(f"{where}: {hint}expected exactly one of {', '.join(KINDS)}; got {spec!r}")
    kind = kinds[0]
    for key in spec:
        if key != kind and key not in OPTIONS[kind]:
            allowed = ", ".join(OPTIONS[kind]) or "none"
            raise SpaceError(f"{where}: '{key}' is not an option of {kind} (options: {allowed})")
    if kind == "categorical":
        return _categorical(path, spec[kind], where)
    return _numeric(path, kind, spec, where)


def _categorical(path: str, choices: Any, where: str) -> Param:
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: categorical expects a non-empty list of choices; got {choices!r}")
    labels = [json.dumps(c, sort_keys=True) for c in choices]
    if len(set(labels)) != len(labels):
        raise SpaceError(f"{where}: categorical choices must differ; got {choices!r}")
    return Param(path, "categorical", choices=tuple(choices))


def _numeric(path: str, kind: str, spec: dict[str, Any], where: str) -> Param:
    bounds, log, step = spec[kind], spec.get("log", False), spec.get("step")
    number = (int,) if kind == "int" else (int, float)
    ok = isinstance(bounds, list) and len(bounds) == 2
    if not ok or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds):
        raise SpaceError(f"{where}: {kind} expects [low, high] of {kind}s; got {bounds!r}")
    low, high = bounds
    if not all(_representable(b, kind) for b in bounds) or low >= high or not math.isfinite(float(high) - float(low)):
        raise SpaceError(
            f"{where}: {kind} expects finite low < high{' within +-2^53' if kind == 'int' else ''}; "
            f"got [{_short(low)}, {_short(high)}]"
        )
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log expects true or false; got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log distribution needs low > 0; got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or not _representable(step, kind) or step <= 0:
            raise SpaceError(f"{where}: step expects a finite {kind} > 0; got {_short(step)}")
        if step > float(high) - float(low):
            raise SpaceError(f"{where}: step {step} is larger than the range [{low}, {high}]")
        if log and (kind == "float" or step != 1):
            raise SpaceError(f"{where}: step and log cannot be combined (Optuna samples one or the other)")
    return Param(path, kind, float(low), float(high), log, None if step is None else float(step))


#: Optuna keeps every number as a float: integers beyond this lose their last digits
MAX_INT = 2**53


def _representable(x: Any, kind: str) -> bool:
    """A finite number Optuna keeps exactly (an int bound within +-2^53; no float overflow)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    if isinstance(x, int) and kind == "int":
        return abs(x) <= MAX_INT
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an integer beyond the float range
        return False


def _short(x: Any) -> str:
    """A bound for a message: a 400-digit integer is not printed whole."""
    text = repr(x) if not isinstance(x, int) or abs(x) < 10**20 else f"an integer of {len(str(abs(x)))} digits"
    return text[:60]


def _spec(p: Param) -> dict[str, Any]:
    if p.kind == "categorical":
        return {"categorical": list(p.choices)}
    cast = int if p.kind == "int" else float
    out: dict[str, Any] = {p.kind: [cast(p.low), cast(p.high)]}
    if p.log:
        out["log"] = True
    if p.step is not None:
        out["step"] = cast(p.step)
    return out


def overrides(values: dict[str, Any]) -> list[str]:
    """``--set`` strings for ``values`` (JSON is YAML: the override path parses each back exactly)."""
    return [f"{path}={json.dumps(v)}" for path, v in values.items()]


def build(raw: dict[str, Any], sets: list[str], where: str) -> Recipe:
    """The recipe ``raw`` with ``sets`` applied through ``load_recipe``'s override path and the strict schema."""
    return validate(Recipe, apply_overrides(copy.deepcopy(raw), sets), where=where)


def check_space(space: Space, raw: dict[str, Any], fixed: list[str], where: str) -> None:
    """Build a recipe for every probe of every parameter (the others at the recipe's values): an unknown
    path or a value the schema refuses is one ``SpaceError`` line, before any trial."""
    for p in space.params:
        for what, value in p.probes():
            try:
                build(raw, [*fixed, *overrides({p.path: value})], where)
            except RecipeError as e:
                raise SpaceError(
                    f"{space.source}: {p.path} = {json.dumps(value)} ({what}) does not fit the recipe: {e}"
                ) from None
