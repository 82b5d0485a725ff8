"""The shape that has to hold as families grow (docs/architecture.md): core imports no family, no import
cycles, a stage is one registration, and the verbs return typed reports."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

import distillprune as dp
from distillprune.core.config import validate
from distillprune.core.reporting import Details
from distillprune.recipes.registry import STAGES, StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig

SRC = Path(dp.__file__).parent
FAMILIES = {
    "cluster",
    "data",
    "distill",
    "export",
    "lowrank",
    "measure",
    "models",
    "pipeline",
    "prune",
    "quant",
    "recipes",
    "report",
    "ssl",
    "train",
}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """distillprune modules imported by ``path`` (``from a import b`` counts b when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if top_level_only and isinstance(node, ast.If):  # ``if TYPE_CHECKING:`` blocks are not imports
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("distillprune")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distillprune"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


FILES = sorted(SRC.rglob("*.py"))
MODULES = {_module(p): p for p in FILES}


def test_core_imports_no_family():
    for mod, path in MODULES.items():
        if mod.startswith("distillprune.core"):
            for imp in _imports(path, top_level_only=False):
                parts = imp.split(".")
                assert len(parts) < 2 or parts[1] not in FAMILIES, f"{mod} imports {imp}"


def _parents(mod: str) -> list[str]:
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # importing a.b.c runs a.b's __init__


def test_no_import_cycles():
    """Every import -- module-level, inside a function (a "lazy" import hides a circle, it does not remove
    it) and under ``if TYPE_CHECKING:`` -- with the package ``__init__`` a submodule import runs, forms no
    cycle (the top-level ``distillprune/__init__`` re-exports everything and is left out)."""
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        if mod == "distillprune":
            continue
        deps = set()
        for imp in _imports(path, top_level_only=False):
            deps |= {d for d in [*_parents(imp), imp] if d in MODULES and d != "distillprune" and d != mod}
        graph[mod] = deps - set(_parents(mod))  # a package __init__ importing its own children is not a cycle
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


def test_no_any_typed_config_crosses_a_family():
    """Config parameters are typed: no ``cfg: Any`` / ``qat: Any`` in the library's signatures."""
    offenders = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in node.args.args + node.args.kwonlyargs:
                    if (
                        a.arg in ("cfg", "config", "qat", "spec")
                        and a.annotation is not None
                        and ast.unparse(a.annotation) == "Any"
                    ):
                        offenders.append(f"{mod}.{node.name}({a.arg}: Any)")
    assert not offenders, offenders


def test_version_is_in_one_place():
    pyproject = (SRC.parent.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "distillprune._version.__version__" in pyproject
    assert dp.__version__ == (SRC / "_version.py").read_text().split('"')[1]


# ---------------------------------------------------------------- a stage is one registration
class EchoStage(StageConfig):
    """Scale the model's last layer (a toy stage registered by this test file)."""

    example: ClassVar[dict[str, Any]] = {"factor": 2.0}
    type: Literal["echo"]
    factor: float = 1.0


@dataclasses.dataclass
class EchoReport(Details):
    kind = "echo-test"
    factor: float = 1.0


@pytest.fixture
def echo_stage():
    import torch

    @register_stage(EchoStage)
    def run(st: EchoStage, state, index: int) -> StageOutcome:
        with torch.no_grad():
            state.model.fc.weight.mul_(st.factor)
        return StageOutcome(EchoReport(st.factor))

    yield
    STAGES.unregister("echo")


def test_a_stage_registered_from_outside_runs_in_a_recipe(echo_stage, tmp_path):
    import torch

    recipe = dp.Recipe.model_validate(
        {
            "name": "toy",
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "data": {"source": "digits", "limit_train": 64, "limit_test": 32},
            "runtime": {"progress": False, "tensorboard": False},
            "measure": {"enabled": False},
            "stages": [{"type": "evaluate"}, {"type": "echo", "factor": 3.0}],
        }
    )
    state = dp.pipeline.execute(recipe, tmp_path / "run", quiet=True)
    assert [s.type for s in state.report.stages] == ["evaluate", "echo"]
    assert state.report.stages[1].details.factor == 3.0 and state.report.stages[1].measured
    with pytest.raises(dp.RecipeError, match="stages.1: unknown key 'factr' \\(did you mean 'factor'"):
        validate(dp.Recipe, {"stages": [{"type": "evaluate"}, {"type": "echo", "factr": 3.0}]})
    assert torch.isfinite(state.model.fc.weight).all()


def test_unregistered_stage_is_gone_from_the_union():
    with pytest.raises(dp.RecipeError, match="unknown stage type 'echo'"):
        validate(dp.Recipe, {"stages": [{"type": "echo"}]})


def test_cli_list_and_the_readme_stage_table_come_from_the_registry():
    from distillprune.cli import stage_table

    readme = (SRC.parent.parent / "README.md").read_text()
    begin, end = "<!-- stages:begin -->", "<!-- stages:end -->"
    assert begin in readme and end in readme
    assert readme.split(begin)[1].split(end)[0].strip() == stage_table().strip(), (
        "README stage table is stale: regenerate it with `distillprune list stages --markdown`"
    )


# ---------------------------------------------------------------- stages know themselves
def _names_a_stage_type(node: ast.AST, names: set[str]) -> bool:
    """``x.type == "prune"`` / ``st.type not in ("train", ...)``, or a module constant listing stage names."""
    strings = lambda n: (  # noqa: E731
        {n.value}
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
        else {e.value for e in getattr(n, "elts", []) if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    )
    if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if any(isinstance(s, ast.Attribute) and s.attr == "type" for s in sides):
            return any(strings(s) & names for s in sides)
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.Tuple, ast.List, ast.Set)):
        found = strings(node.value)
        return len(found) > 1 and found <= names
    return False


def test_the_pipeline_and_preflight_name_no_stage_type():
    """What a stage is (keeps layers, measures its input, its preflight dry-run) is a trait of its config,
    so the pipeline's modules outside ``pipeline/stages/`` never test a stage's type by name."""
    names = set(STAGES.names())
    offenders = []
    for mod, path in MODULES.items():
        if mod.startswith("distillprune.pipeline") and not mod.startswith("distillprune.pipeline.stages"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if _names_a_stage_type(node, names):
                    offenders.append(f"{mod}:{node.lineno}")
    assert not offenders, offenders


class DryStage(StageConfig):
    """A toy stage whose preflight dry-run refuses a residual net (a model with a ``layer1``)."""

    keeps_layers: ClassVar[bool] = True
    type: Literal["dry"]

    def dry_run(self, model, data, where, name):  # type: ignore[no-untyped-def]
        net = model()
        if net is not None and hasattr(net, "layer1"):
            raise dp.RecipeError(f"{where}: model '{name}' is a residual net")


def test_a_stage_s_own_dry_run_runs_in_preflight_and_its_traits_steer_the_run(tmp_path):
    from distillprune.pipeline.preflight import preflight

    @register_stage(DryStage)
    def run(st: DryStage, state, index: int) -> StageOutcome:
        return StageOutcome()

    try:
        base = {
            "data": {"source": "digits", "limit_train": 64, "limit_test": 32},
            "runtime": {"progress": False, "tensorboard": False},
            "measure": {"enabled": False},
        }
        data = dp.load_data(dp.DataConfig(source="digits", limit_train=64, limit_test=32))
        cnn = {"name": "digits_cnn", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}}
        bad = dp.Recipe.model_validate({**base, "model": cnn, "stages": [{"type": "evaluate"}, {"type": "dry"}]})
        with pytest.raises(dp.RecipeError, match="stages.1: model 'digits_cnn' is a residual net"):
            preflight(bad, data)  # evaluate keeps the layers: the dry-run sees the recipe's model
        after_prune = [{"type": "prune", "width": {"ratio": 0.5, "round_to": 4}}, {"type": "dry"}]
        preflight(dp.Recipe.model_validate({**base, "model": cnn, "stages": after_prune}), data)  # model changed
        mlp = {"name": "mlp", "kwargs": {"hidden": [16]}}
        ok = dp.Recipe.model_validate({**base, "model": mlp, "stages": [{"type": "dry"}, {"type": "evaluate"}]})
        state = dp.pipeline.execute(ok, tmp_path / "run", quiet=True)
        assert [s.name for s in state.report.stages][:2] == ["0:input", "1:dry"]  # dry does not measure its input
    finally:
        STAGES.unregister("dry")


def test_every_public_name_loads_from_the_lazy_package():
    """``import distillprune`` imports no family; each name of ``__all__`` loads the library on first use."""
    import distillprune._library as lib

    for name in dp.__all__:
        assert getattr(dp, name) is getattr(lib, name, getattr(dp, name)), name  # the verb, not a subpackage
    assert callable(dp.distill) and dp.distill is lib.distill  # (``distillprune.distill`` is also a subpackage)
    assert set(dp.__all__) <= set(dir(dp))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dp.not_a_name  # noqa: B018


def _folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()) else ""


def test_no_folder_level_import_loops():
    """Between folders (families) the imports -- lazy ones included -- form no loop: ``measure`` reading a
    recipe, or ``report`` reading the pipeline's run-folder rules, would tie two families into one."""
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        src = _folder(mod)
        if not src:
            continue
        deps = {_folder(d) for d in _imports(path, top_level_only=False)}
        graph.setdefault(src, set()).update(d for d in deps if d and d != src)
    loops = []
    for a, deps in graph.items():
        for b in deps:
            if a in _reach(graph, b):
                loops.append(f"{a} -> {b} -> ... -> {a}")
    assert not loops, loops


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        for d in graph.get(n, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_docs_architecture_names_every_file_of_prune():
    """docs/architecture.md stays true to ``prune/``: every file under it is named there (``prune/<path>``)."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    files = sorted(p.relative_to(SRC).as_posix() for p in (SRC / "prune").rglob("*.py"))
    assert files and [f for f in files if f"`{f}`" not in doc] == []
