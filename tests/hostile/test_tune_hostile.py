"""``distillprune tune`` on hostile input: a study database that is random bytes, empty, a link, another
program's or another search's; a stored trial whose run folder is ``../../../x``; bounds that are not
numbers Optuna can keep; ``--trials`` <= 0; a corrupt ``test.json``; an ``--out`` holding a user's files.
Each is one line and exit 2, before any trial runs, and nothing outside the tune folder is written."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from hostile_helpers import RECIPE, UserFiles, refused, run, write_recipe

from distillprune.errors import DistillpruneError

optuna = pytest.importorskip("optuna")

SPACE = "stages.0.optimizer.lr: {float: [0.01, 0.2], log: true}\n"


NET = """
import torch

class Net(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(recipe, space, tune folder) of a finished one-trial search of a user's own class (``model.python``:
    its trial checkpoints reload for the test-set evaluation without --trust-code, the recipe names it)."""
    from distillprune.cli import main

    root = tmp_path_factory.mktemp("tune")
    (root / "net.py").write_text(NET)
    recipe = write_recipe(root / "r.yaml", RECIPE, model={"python": f"{root / 'net.py'}:Net"})
    space = root / "space.yaml"
    space.write_text(SPACE)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["tune", str(recipe), "--space", str(space), "--trials", "1", "--out", str(root / "out")])
    assert code == 0 and err.getvalue() == "", err.getvalue()  # Optuna's lines go to stdout
    return recipe, space, root / "out"


def test_a_search_of_the_users_own_class_reads_the_test_set_once(searched):
    _, _, out = searched
    assert list(json.loads((out / "test.json").read_text())) == ["0"] and (out / "best.yaml").is_file()


def _copy(searched, tmp_path: Path) -> tuple[Path, Path, Path]:
    recipe, space, out = searched
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    return recipe, space, tmp_path / "out"


def _resume(capsys, recipe, space, out, match: str, trials: int = 2) -> str:
    return refused(capsys, "tune", recipe, "--space", space, "--trials", trials, "--out", out, "--resume", match=match)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda db, tmp: db.write_bytes(bytes(range(256)) * 8), "not an SQLite file"),
        (lambda db, tmp: db.write_bytes(b""), "not an SQLite file"),
        (lambda db, tmp: db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000), "not a readable study database"),
        (lambda db, tmp: (db.unlink(), db.symlink_to(tmp / "notes.txt")), "symbolic link"),
        (lambda db, tmp: (db.unlink(), optuna.create_study(study_name="other", storage=f"sqlite:///{db}")),
         "holds no distillprune tune study"),
    ],
    ids=["random-bytes", "empty", "corrupt-sqlite", "symlink", "foreign-study"],
)  # fmt: skip
def test_a_damaged_or_foreign_study_db_is_one_line(searched, tmp_path, capsys, damage, match):
    recipe, space, out = _copy(searched, tmp_path)
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    damage(out / "study.db", tmp_path)
    _resume(capsys, recipe, space, out, match)
    assert (tmp_path / "notes.txt").read_text() == "the user's notes\n"


def test_a_study_of_another_search_is_one_line(searched, tmp_path, capsys):
    recipe, _, out = _copy(searched, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("stages.0.optimizer.lr: {float: [0.001, 0.2], log: true}\n")
    _resume(capsys, recipe, other, out, "space differ")


def test_a_trial_folder_read_from_the_db_stays_in_the_tune_folder(searched, tmp_path, capsys):
    """A killed trial whose stored folder is ``../../../x``: a retry would have run (ONNX, report,
    checkpoints) outside the tune folder."""
    from distillprune.tune.api import STUDY

    recipe, space, out = _copy(searched, tmp_path)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}")
    trial = study.ask()
    trial.suggest_float("stages.0.optimizer.lr", 0.01, 0.2, log=True)
    trial.set_user_attr("folder", "../../../x")
    before = sorted(p.name for p in tmp_path.iterdir())
    _resume(capsys, recipe, space, out, "trial 1 names its run folder '../../../x'")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (out.parent.parent / "x").exists()


def test_trial_and_stage_folders_read_from_files_are_plain_names(tmp_path):
    from distillprune.pipeline.rundir import completed_stage
    from distillprune.tune.trial import folder_of

    class Trial:
        number, user_attrs = 3, {"folder": "../x"}

    with pytest.raises(DistillpruneError, match="expected trial-NNNN"):
        folder_of(tmp_path, Trial())
    Trial.user_attrs = {"folder": "trial-0001"}
    assert folder_of(tmp_path, Trial()) == tmp_path / "trial-0001"
    (tmp_path / "state.json").write_text(json.dumps({"completed": 1, "kind": "../../../etc"}))
    with pytest.raises(DistillpruneError, match="corrupt run state"):
        completed_stage(tmp_path)


@pytest.mark.parametrize("text", ["{not json", '{"0": "ninety"}', "[]", '{"../x": 90.0}'])
def test_a_corrupt_test_json_is_one_line(searched, tmp_path, capsys, text):
    recipe, space, out = _copy(searched, tmp_path)
    (out / "test.json").write_text(text)
    _resume(capsys, recipe, space, out, "test.json: corrupt", trials=1)


@pytest.mark.parametrize(
    "space, match",
    [
        (f"stages.0.epochs: {{int: [1, {10**400}]}}", "an integer of 401 digits"),
        (f"stages.0.epochs: {{int: [1, {2**60}]}}", "within +-2^53"),
        ("stages.0.optimizer.lr: {float: [.nan, 0.2]}", "finite low < high"),
        ("stages.0.optimizer.lr: {float: [-.inf, 0.2]}", "finite low < high"),
        (f"stages.0.optimizer.lr: {{float: [{-(10**400)}, 1]}}", "finite low < high"),
        ("stages.0.optimizer.lr: {float: [-1.0e+308, 1.0e+308]}", "finite low < high"),
        ("stages.0.optimizer.lr: {float: [0.01, 0.2], step: .inf}", "step expects a finite float > 0"),
        ("stages.0.optimizer.lr: {float: [0.01, 0.2], step: 0.5}", "larger than the range"),
        ("stages.0.label_smoothing: {float: [0, 5]}", "does not fit the recipe"),
    ],
)
def test_bounds_that_are_not_numbers_optuna_keeps_are_one_line(tmp_path, capsys, space, match):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    refused(capsys, "tune", recipe, "--space", path, "--trials", 1, "--out", tmp_path / "out", match=match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_trials_must_be_positive(tmp_path, capsys, trials):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    (tmp_path / "space.yaml").write_text(SPACE)
    out = ["--out", tmp_path / "out"]
    refused(capsys, "tune", recipe, "--space", tmp_path / "space.yaml", "--trials", trials, *out, match="--trials")


def test_tune_never_writes_into_a_users_folder(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    (tmp_path / "space.yaml").write_text(SPACE)
    user = UserFiles(tmp_path / "user")
    (user.root / "tune.html").write_text("<p>the user's page</p>\n")
    user.before = user.snapshot()
    args = ["tune", recipe, "--space", tmp_path / "space.yaml", "--trials", 1, "--out", user.root]
    refused(capsys, *args, match="not empty and holds no study")
    refused(capsys, *args, "--resume", match="no study to resume")
    (tmp_path / "link").symlink_to(user.root, target_is_directory=True)
    refused(capsys, *args[:-1], tmp_path / "link", match="symbolic link")
    assert user.unchanged()
    assert run(capsys, "tune", "--help")[0] == 0
