"""Typed configs: pydantic models that reject unknown keys with the nearest valid key."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    model_validator,
)

from distillprune.core.registry import Registry, nearest
from distillprune.errors import RecipeError


class StrictModel(BaseModel):
    """Base for every option group: unknown keys are errors, assignment is validated, a float is finite (NaN
    and inf are refused: ``.inf`` seconds never ends, a NaN temperature trains garbage), and ``true`` is not
    a number nor ``!!binary`` a text (pydantic's lax mode would take them as 1 and as UTF-8)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key, value in data.items():
                if key not in cls.model_fields:
                    raise ValueError(f"unknown key '{key}'{nearest(str(key), valid)}; valid keys: {', '.join(valid)}")
                try:
                    refuse_lax(value, cls.model_fields[key].annotation)
                except ValueError as e:
                    raise ValueError(f"{key}: {e}") from None
        return data


def refuse_lax(value: Any, annotation: Any) -> None:
    """Raise ValueError for a bool or bytes (at the top or inside a list) that ``annotation`` does not name."""
    leaves = _leaf_types(annotation)
    if Any in leaves or object in leaves:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool) and bool not in leaves:
            raise ValueError(f"expected {_expected(leaves)}, got {str(v).lower()} (a boolean)")
        if isinstance(v, (bytes, bytearray)) and bytes not in leaves:
            raise ValueError(f"expected {_expected(leaves)}, got binary data ({len(v)} bytes)")


def _leaf_types(annotation: Any) -> set[Any]:
    """Every type a (possibly nested, Optional, Annotated) annotation names."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(args[0])
    if origin is typing.Literal:
        return {type(a) for a in args}
    if origin is None and not isinstance(annotation, types.UnionType):
        return {annotation}
    out: set[Any] = set()
    for a in args:
        out |= _leaf_types(a)
    return out


def _expected(leaves: set[Any]) -> str:
    names = {int: "an integer", float: "a number", str: "text"}
    found = [names[t] for t in (int, float, str) if t in leaves]
    return " or ".join(found) or "a value of another type"


def one_line(err: ValidationError) -> str:
    """The first validation error as one line: 'stages.1.width.ratio: Input should be ... (got 3)'."""
    e = err.errors(include_url=False)[0]
    parts = e["loc"]
    loc = ".".join(
        str(p)
        for i, p in enumerate(parts)
        if not _is_union_tag(p, parts[i - 1] if i else None) and not _is_member_tag(p)
    )
    msg = e["msg"].removeprefix("Value error, ")
    got = ""
    if e["type"] not in ("value_error", "missing") and "input" in e and not isinstance(e["input"], dict):
        got = f" (got {e['input']!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{loc}: {msg}{got}{tail}" if loc else f"{msg}{got}{tail}"  # a root validator names its own keys


def _is_union_tag(part: Any, previous: Any = None) -> bool:
    # pydantic puts the tag of a discriminated union (e.g. 'prune') in the location, right after the list
    # index; drop it there only: a field may have the same name as a tag (FinetuneStage.distill).
    return isinstance(part, str) and part in _TAGS and isinstance(previous, int)


def _is_member_tag(part: Any) -> bool:
    # pydantic names the member of a plain union that failed ('str', 'function-after[...]', 'ModelConfig');
    # fields are snake_case, so these are never a key of the user's file
    return isinstance(part, str) and ("[" in part or part in _BUILTIN_TYPES or part[:1].isupper())


_BUILTIN_TYPES = {"str", "int", "float", "bool", "list", "dict", "tuple", "set", "bytes", "none"}
_TAGS: set[str] = set()


def register_union_tags(*tags: str) -> None:
    _TAGS.update(tags)


def validate(cls: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        prefix = f"{where}: " if where else ""
        raise RecipeError(f"{prefix}{one_line(err)}") from None


def registered(registry: Registry[Any]) -> Any:
    """A ``str`` field type whose value must be a name in ``registry`` (checked when validated, so the
    error carries the field's location and the nearest registered name)::

        method: registered(QUANTIZERS) = "static"
    """
    return Annotated[str, AfterValidator(registry.check)]
