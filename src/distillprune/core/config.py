"""Typed configs: pydantic models that reject unknown keys with the nearest valid key."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from distillprune.core.registry import Registry, nearest
from distillprune.errors import RecipeError


class StrictModel(BaseModel):
    """Base for every option group: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(f"unknown key '{key}'{nearest(str(key), valid)}; valid keys: {', '.join(valid)}")
        return data


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

        importance: registered(IMPORTANCE) = "l2"
    """
    return Annotated[str, AfterValidator(registry.check)]
