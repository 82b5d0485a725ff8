"""Typed configs: pydantic models that reject unknown keys with the nearest valid key."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from distillprune.core.registry import nearest
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
                    raise ValueError(
                        f"unknown key '{key}'{nearest(str(key), valid)}; valid keys: {', '.join(valid)}"
                    )
        return data


def one_line(err: ValidationError) -> str:
    """The first validation error as one line: 'stages.1.width.ratio: Input should be ... (got 3)'."""
    e = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in e["loc"] if not _is_union_tag(p))
    msg = e["msg"].removeprefix("Value error, ")
    got = ""
    if e["type"] not in ("value_error", "missing") and "input" in e and not isinstance(e["input"], dict):
        got = f" (got {e['input']!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{loc or '<root>'}: {msg}{got}{tail}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tag of a discriminated union (e.g. 'prune') in the location; drop it.
    return isinstance(part, str) and part in _TAGS


_TAGS: set[str] = set()


def register_union_tags(*tags: str) -> None:
    _TAGS.update(tags)


def validate(cls: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        prefix = f"{where}: " if where else ""
        raise RecipeError(f"{prefix}{one_line(err)}") from None
