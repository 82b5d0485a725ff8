"""Typed reports of the library verbs, and their JSON form.

Every verb (``prune_``, ``distill``, ``quantize``, ``lowrank_``, ``cluster_``, ``export_onnx``) returns a
dataclass derived from :class:`Details`; a pipeline stage carries it in its ``StageResult`` and
``report.json`` stores it as its fields plus ``"kind"``. Loading a report turns each mapping back into
its class through the registry (:func:`details_type`); nested dataclasses, lists and optionals of them
are rebuilt from their type hints. A mapping of unknown kind (an older report) stays a plain dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from distillprune.core.registry import Registry

T = TypeVar("T")


@dataclasses.dataclass
class Details:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **to_jsonable(self)}


DETAILS: Registry[type[Details]] = Registry("report kind")
D = TypeVar("D", bound=Details)


def details_type(cls: type[D]) -> type[D]:
    """Class decorator: register a Details dataclass under its ``kind`` so reports load back typed."""
    kind = getattr(cls, "kind", "")
    if not kind:
        raise ValueError(f"{cls.__name__} needs a class attribute kind = '<name>'")
    DETAILS.register(kind)(cls)
    return cls


@dataclasses.dataclass
class Deployed:
    """The artefact a stage ships when it is not the float model (an int8 ONNX file, packed weights); the
    stage's report row measures it instead of the float model."""

    artefact: str
    bytes: int | None = None
    latency_ms: dict[str, float] | None = None  # None: keep the float model's; {}: not measurable here
    accuracy: float | None = None
    speedups: dict[str, float] = dataclasses.field(default_factory=dict)  # paired with the dense model
    spread: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] | None = None  # task quality of the artefact (embedders: cosine to the teacher)
    load: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # the machine's, while timing it


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (recursively) to dicts; Details nested inside keep their ``kind``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if hasattr(obj, "op") and hasattr(obj, "replay"):  # history ops keep their op name
            out = {"op": obj.op, **out}
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def details_from_dict(d: Any) -> Any:
    """The typed Details for a mapping with a registered ``kind``; anything else unchanged."""
    if isinstance(d, dict) and d.get("kind") in DETAILS:
        cls = DETAILS.get(d["kind"])
        return from_jsonable(cls, {k: v for k, v in d.items() if k != "kind"})
    return d


def from_jsonable(cls: type[T], d: dict[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from its JSON form (unknown keys are ignored: newer reports load)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d:
            kwargs[f.name] = _value(hints.get(f.name, Any), d[f.name])
    return cls(**kwargs)


def _value(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None) and (dataclasses.is_dataclass(arg) or typing.get_origin(arg) is list):
                return _value(arg, v)
        return v
    if origin is list and isinstance(v, list):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_value(arg, x) for x in v]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(v, dict):
        if hasattr(tp, "op") and "op" in v:  # a history op
            from distillprune.core.history import op_from_dict

            return op_from_dict(v)
        return from_jsonable(tp, v)
    return v
