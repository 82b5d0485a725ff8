"""Small functions everywhere in ``src/distillprune`` (issue 18 for ``prune/``, issue 28 for the rest): no function
over 60 lines, none over 8 parameters (``self`` / ``cls`` not counted; ``*args`` and ``**kwargs`` count one each).
Read from the source with ``ast``, so a new long function fails here instead of in review."""

from __future__ import annotations

import ast
from pathlib import Path

import distillprune as dp

SRC = Path(dp.__file__).parent
MAX_LINES = 60
MAX_PARAMS = 8

#: functions allowed to break the rule, as ``path/under/src.py::Class.function``; an entry that no longer breaks
#: it fails the test below, so the list only shrinks
KNOWN: set[str] = {
    "cli.py::tune",  # a typer command: its parameters are the command's options
    "data/base.py::TensorLoader.__init__",
    "quant/api.py::make_job",
    "quant/api.py::quantize",
    "tune/api.py::tune",
}


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node, f"{prefix}{node.name}.")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def _too_big() -> dict[str, str]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        for name, fn in _functions(ast.parse(path.read_text(), str(path))):
            lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1  # from the def line to the last, docstring included
            params = _params(fn)
            if lines > MAX_LINES or params > MAX_PARAMS:
                out[f"{path.relative_to(SRC).as_posix()}::{name}"] = f"{lines} lines, {params} parameters"
    return out


def test_no_function_in_src_is_over_60_lines_or_8_parameters():
    found = _too_big()
    new = {k: v for k, v in found.items() if k not in KNOWN}
    assert not new, (
        f"functions in src/distillprune over {MAX_LINES} lines or {MAX_PARAMS} parameters: {new}; split the "
        "function, or group its parameters into one object (a config, a context dataclass)"
    )
    stale = KNOWN - set(found)
    assert not stale, f"{sorted(stale)} now keep the rule: remove them from KNOWN"


def test_the_rule_sees_methods_nested_functions_and_every_kind_of_parameter():
    src = "class A:\n    def m(self, a, b, /, c, *args, d, **kw):\n        def inner(x):\n            return x\n"
    found = {name: _params(fn) for name, fn in _functions(ast.parse(src))}
    assert found == {"A.m": 6, "A.m.inner": 1}
