"""Reading recipe YAML strictly: ``yaml.SafeLoader`` plus duplicate keys as errors, errors with line numbers,
UTF-8 only, and a bound on what aliases may expand to. Every failure is one ``RecipeError`` line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distillprune.errors import RecipeError

#: the most scalars a recipe may expand to (YAML aliases can make a small file describe a huge tree)
MAX_VALUES = 100_000


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML lets the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML say so, with its position
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML; ``source`` names it in errors ('recipe.yaml', '--set a.b=...')."""
    try:
        data = yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        raise RecipeError(f"{source}: not valid YAML{_where(e)}: {_what(e)}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested too deeply to be a recipe") from None
    if _count(data, {}, 0) > MAX_VALUES:
        raise RecipeError(
            f"{source}: expands to more than {MAX_VALUES} values (YAML aliases?); a recipe is a small mapping"
        )
    return data


def read_text(path: str | Path) -> str:
    """A recipe file's text; UTF-8 only (a binary or mis-encoded file is a one-line error)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p}" if not p.exists() else f"recipe {p} is not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise RecipeError(f"recipe {p}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"recipe {p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); a recipe is a YAML text file"
        ) from None


def _where(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _what(e: yaml.MarkedYAMLError) -> str:
    parts = [e.context, e.problem]
    if e.context_mark is not None and e.problem_mark is not None and e.context_mark.line != e.problem_mark.line:
        parts[0] = f"{e.context} (line {e.context_mark.line + 1})" if e.context else None
    return " ".join(" ".join(str(p).split()) for p in parts if p)


def _count(node: Any, memo: dict[int, int], depth: int) -> int:
    """How many values ``node`` expands to when written out (shared subtrees counted each time)."""
    if depth > 200:
        return MAX_VALUES + 1
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in memo:
        return memo[id(node)]
    items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
    total = 1
    for _, v in items:
        total += _count(v, memo, depth + 1)
        if total > MAX_VALUES:
            break
    memo[id(node)] = total
    return total
