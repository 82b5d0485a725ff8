"""No code from data by any door: a Hugging Face folder whose ``auto_map`` names code (model, config or
tokenizer), a checkpoint's ``ref.module`` on ``--resume``; stdin is never read (transformers would ask "Do you
wish to run the custom code? [y/N]" there); no ``__pycache__`` beside a user's class file or in a checkpoint.
Every case feeds ``y`` on stdin and plants code that would create a marker file if it ran."""

from __future__ import annotations

import io
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_helpers import RECIPE, refused, run, write_recipe

from distillprune.cli import main
from distillprune.core.trust import code_trust, hf_code, hf_options

pytest.importorskip("transformers")

MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture
def answer_yes(monkeypatch) -> io.StringIO:
    """``y`` waiting on stdin, as a user answering the prompt would type it."""
    stdin = io.StringIO("y\ny\ny\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def _hf_folder(root: Path, marker: Path, *, model_code: bool, tokenizer_code: bool, tokenizer_files: bool) -> Path:
    from distillprune.transformers.testing import tiny_bert_folder

    folder = tiny_bert_folder(root / "hf", num_labels=2)
    cfg = json.loads((folder / "config.json").read_text())
    if model_code:
        cfg["model_type"] = "evilbert"
        cfg["auto_map"] = {k: "evil.Evil" for k in ("AutoConfig", "AutoModel", "AutoModelForSequenceClassification")}
        (folder / "evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    (folder / "config.json").write_text(json.dumps(cfg))
    if tokenizer_code:  # a tokenizer folder of its own (no config.json to name a stock tokenizer class)
        tok_folder = root / "tok"
        tok_folder.mkdir()
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok.pop("tokenizer_class", None)
        tok["auto_map"] = {"AutoTokenizer": ["evil_tok.EvilTokenizer", None]}
        (tok_folder / "tokenizer_config.json").write_text(json.dumps(tok))
        (tok_folder / "evil_tok.py").write_text(MARKER_CODE.format(marker=str(marker)))
        shutil.copy(folder / "tokenizer.json", tok_folder / "tokenizer.json")
    if not tokenizer_files:  # the tokenizer then reads config.json (the issue's `validate` case)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    return folder


def _hf_recipe(tmp_path: Path, folder: Path) -> Path:
    from distillprune.transformers.testing import tiny_sentiment

    data = tiny_sentiment(tmp_path / "data", n_train=32, n_test=16)
    tok = tmp_path / "tok" if (tmp_path / "tok").is_dir() else folder
    return write_recipe(
        tmp_path / "hf.yaml",
        model={"source": "hf", "path": str(folder), "task": "sequence-classification"},
        data={"source": "text", "path": str(data), "text": {"max_length": 16, "tokenizer": str(tok)}, "batch_size": 16},
        stages=[{"type": "evaluate"}],
    )


@pytest.mark.parametrize(
    "model_code, tokenizer_code, tokenizer_files",
    [(True, True, True), (True, False, False), (False, True, True)],
    ids=["model-and-tokenizer", "model-no-tokenizer-files", "tokenizer-folder"],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_hf_auto_map_never_runs_without_trust_code(
    tmp_path, capsys, answer_yes, command, model_code, tokenizer_code, tokenizer_files
):
    marker = tmp_path / "MARKER"
    folder = _hf_folder(tmp_path, marker, model_code=model_code, tokenizer_code=tokenizer_code,
                        tokenizer_files=tokenizer_files)  # fmt: skip
    recipe = _hf_recipe(tmp_path, folder)
    out = ["--out", tmp_path / "run"] if command == "run" else []
    line = refused(capsys, command, recipe, *out, match="auto_map names Python code")
    assert "--trust-code" in line and not marker.exists()
    assert answer_yes.read() == "y\ny\ny\n"  # nobody read the answer


def test_the_trust_rule_reaches_every_from_pretrained(tmp_path):
    """Explicit ``trust_remote_code`` always (transformers asks on stdin only when it is None); True only
    under the opt-in; distillprune's own layout entry (which its loader never imports) is no code."""
    cfg = {"model_type": "bert", "auto_map": {"AutoModel": "modeling_distillprune.DistillpruneBertModel"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert hf_code(tmp_path) == []
    assert hf_options(tmp_path, "model.path") == {"local_files_only": True, "trust_remote_code": False}
    cfg["auto_map"]["AutoConfig"] = "modeling_distillprune.DistillpruneBertModel"  # not where ours goes
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert hf_code(tmp_path) == ["config.json: AutoConfig -> modeling_distillprune.DistillpruneBertModel"]
    with code_trust(True):
        assert hf_options(tmp_path, "model.path")["trust_remote_code"] is True


def test_a_command_never_reads_stdin(tmp_path, capsys, monkeypatch, answer_yes):
    seen = []

    def load_recipe(*args, **kwargs):
        seen.append(sys.stdin.read())  # what any library asking a question would get: nothing
        from distillprune.errors import DistillpruneError

        raise DistillpruneError("stop here")

    monkeypatch.setattr("distillprune.recipes.schema.load_recipe", load_recipe)  # what `validate` calls
    refused(capsys, "validate", tmp_path / "r.yaml", match="stop here")
    assert seen == [""] and answer_yes.read() == "y\ny\ny\n"


NET = """
from helper import WIDTH
import torch

class Net(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


@pytest.fixture
def python_run(tmp_path, capsys, monkeypatch) -> tuple[Path, Path, Path]:
    """(recipe, run folder, the user's code folder) of a completed run of a ``model.python`` class whose file
    imports a sibling module; bytecode writing on, as it is by default."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    code = tmp_path / "code"
    code.mkdir()
    (code / "net.py").write_text(textwrap.dedent(NET))
    (code / "helper.py").write_text("WIDTH = 64\n")
    recipe = write_recipe(tmp_path / "r.yaml", model={"python": f"{code / 'net.py'}:Net"})
    assert run(capsys, "run", recipe, "--out", tmp_path / "run")[0] == 0
    return recipe, tmp_path / "run", code


@pytest.mark.parametrize("module", ["hostile_marker_mod", "this"])
def test_a_tampered_checkpoint_never_imports_the_module_it_names(python_run, tmp_path, capsys, monkeypatch, module):
    recipe, run_dir, _ = python_run
    marker = tmp_path / "MARKER"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "hostile_marker_mod.py").write_text(MARKER_CODE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(mods))
    meta_path = run_dir / "stages" / "01_train" / "model.json"
    meta = json.loads(meta_path.read_text())
    ref = meta["arch"]["ref"]
    meta["arch"]["ref"] = {"module": module, "attr": "Net", "sha256": ref["sha256"]}  # the run's own sha256
    meta_path.write_text(json.dumps(meta))
    was_imported = "this" in sys.modules
    capsys.readouterr()
    code = main(["run", str(recipe), "--out", str(run_dir), "--resume"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and "names the file" in err and "not a module" in err, err
    assert not marker.exists() and "hostile_marker_mod" not in sys.modules
    assert was_imported or "this" not in sys.modules
    assert "Beautiful is better than ugly" not in out + err  # the Zen of Python: `this` was never imported


def test_no_bytecode_beside_the_users_code_or_in_a_checkpoint(python_run):
    import distillprune as dp

    _, run_dir, code = python_run
    assert not (code / "__pycache__").exists()
    stage = run_dir / "stages" / "01_train"
    dp.load_checkpoint(stage, trust_code=True)  # imports the class file the checkpoint carries
    assert (stage / "code" / "net.py").is_file() and not (stage / "code" / "__pycache__").exists()


def test_tune_takes_trust_code_like_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("optuna")
    from distillprune.core.trust import current_trust
    from distillprune.errors import DistillpruneError

    seen = []

    def fixed_sets(*args):  # called inside tune's trust block, before any trial
        seen.append(current_trust().trust_code)
        raise DistillpruneError("stop here")

    monkeypatch.setattr("distillprune.tune.api._fixed_sets", fixed_sets)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    space = tmp_path / "space.yaml"
    space.write_text("stages.0.optimizer.lr: {float: [0.01, 0.2]}\n")
    for flag in ([], ["--trust-code"]):
        refused(capsys, "tune", recipe, "--space", space, "--trials", 1, "--out", tmp_path / "t", *flag, match="stop")
    assert seen == [False, True]
