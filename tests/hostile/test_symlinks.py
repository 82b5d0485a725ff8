"""Writes that never follow a planted symbolic link, and an ``--out`` that can never land on a user's data.

A completed run is copied, one of its paths (every file and folder it wrote, its lock and its write test)
is replaced by a link to a user's file or folder (or a dangling link), and the run is resumed: one line, exit
2, the user's files as they were, nothing created where a dangling link points. The write-time checks
(``core.io``: level-by-level ``lstat``, ``O_NOFOLLOW``, ``O_EXCL``) are tested on their own too, for a link
planted while a run is going."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import UserFiles, refused, run, write_recipe

from distillprune.core.io import UnsafePathError, atomic_write, guard, open_append, write_text
from distillprune.pipeline.rundir import PROBE
from distillprune.pipeline.runlock import LOCK, acquire, release_all

#: train, fine-tune with KD (a teacher/ checkpoint) and export: every kind of file a run writes
STAGES = [
    {"type": "train", "epochs": 1},
    {"type": "finetune", "epochs": 1, "distill": {"losses": [{"name": "kd", "temperature": 4.0}]}},
    {"type": "export"},
]


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run folder) of one completed three-stage run."""
    root = tmp_path_factory.mktemp("completed")
    recipe = write_recipe(root / "r.yaml", stages=STAGES)
    from distillprune.cli import main

    assert main(["run", str(recipe), "--out", str(root / "run")]) == 0
    return recipe, root / "run"


def _paths(run_dir: Path) -> list[str]:
    found = [str(p.relative_to(run_dir)) for p in sorted(run_dir.rglob("*"))]
    return sorted({*found, LOCK, PROBE})


def _plant(case: Path, completed: Path, rel: str, dangling: bool) -> tuple[Path, UserFiles, Path]:
    run_dir = case / "run"
    shutil.copytree(completed, run_dir, symlinks=True)
    (run_dir / "state.json").write_text(json.dumps({"completed": 1, "kind": "train"}))  # resume redoes 2, 3
    user = UserFiles(case / "user")
    victim = run_dir / rel
    is_dir = victim.is_dir()
    if is_dir:
        shutil.rmtree(victim)
    elif victim.exists():
        victim.unlink()
    target = case / "nowhere" / Path(rel).name if dangling else user.root / ("folder" if is_dir else "notes.txt")
    victim.symlink_to(target, target_is_directory=is_dir)
    return run_dir, user, target


def test_a_link_planted_at_any_path_the_run_writes_is_refused_on_resume(completed, tmp_path, capsys):
    recipe, done = completed
    paths = _paths(done)
    assert {"run.json", "state.json", "report.json", "metrics.jsonl", "run.log", "model.onnx"} <= set(paths)
    assert any(p.startswith("teacher/") for p in paths) and any(p.endswith("last.safetensors") for p in paths)
    for i, rel in enumerate(paths):
        for dangling in (False, True):
            run_dir, user, target = _plant(tmp_path / f"case{i}{'d' * dangling}", done, rel, dangling)
            line = refused(capsys, "run", recipe, "--out", run_dir, "--resume", match="symbolic link")
            assert rel in line, (rel, line)
            assert user.unchanged(), rel
            assert not dangling or not os.path.lexists(target), rel


@pytest.mark.parametrize("rel", [LOCK, PROBE, "stages", "report.json", "run.json", "model.onnx"])
def test_a_link_in_a_forced_users_folder_is_refused_before_any_write(tmp_path, capsys, rel):
    recipe = write_recipe(tmp_path / "r.yaml", stages=[*STAGES[:1], STAGES[2]])
    out, user = tmp_path / "out", UserFiles(tmp_path / "user")
    out.mkdir()
    (out / "theirs.txt").write_text("a file of the user's: the folder is not a run folder\n")
    (out / rel).symlink_to(tmp_path / "nowhere" / rel)
    refused(capsys, "run", recipe, "--out", out, "--force", match="symbolic link")
    assert not (tmp_path / "nowhere").exists() and user.unchanged()
    assert sorted(p.name for p in out.iterdir()) == sorted(["theirs.txt", rel])


@pytest.mark.parametrize("force", [False, True])
def test_an_out_that_is_a_link_is_never_followed(tmp_path, capsys, user, force):
    recipe = write_recipe(tmp_path / "r.yaml")
    (tmp_path / "out").symlink_to(user.root, target_is_directory=True)
    refused(capsys, "run", recipe, "--out", tmp_path / "out", *(["--force"] if force else []), match="symbolic link")
    assert user.unchanged()


def _npz(path: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255 / 16)).astype(np.uint8)[:, None]
    np.savez(path, x_train=x[:200], y_train=d.target[:200], x_test=x[200:260], y_test=d.target[200:260])
    return path


def test_an_out_that_is_or_holds_the_data_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _npz(data / "data.npz")
    (data / "README.txt").write_text("the data's readme\n")
    before = sorted(p.name for p in data.iterdir())
    recipe = write_recipe(tmp_path / "r.yaml", data={"source": "npz", "path": str(data / "data.npz"), "batch_size": 32})
    for out in (data, tmp_path):
        refused(capsys, "run", recipe, "--out", out, "--force", match="data.path")
    assert sorted(p.name for p in data.iterdir()) == before


def test_an_out_that_is_the_model_or_the_teacher_checkpoint_is_refused(completed, tmp_path, capsys):
    _, done = completed
    ck = tmp_path / "ck"
    shutil.copytree(done / "stages" / "01_train", ck)
    before = sorted(p.name for p in ck.iterdir())
    as_model = write_recipe(tmp_path / "m.yaml", model={"checkpoint": str(ck)}, stages=[{"type": "evaluate"}])
    refused(capsys, "run", as_model, "--out", ck, "--force", match="model.checkpoint")
    teacher = [{"type": "finetune", "epochs": 1, "distill": {"teacher": str(ck), "losses": [{"name": "kd"}]}}]
    as_teacher = write_recipe(tmp_path / "t.yaml", stages=teacher)
    refused(capsys, "run", as_teacher, "--out", ck, "--force", match="stages.0.distill.teacher")
    assert sorted(p.name for p in ck.iterdir()) == before


def test_an_out_with_dotdot_is_judged_where_it_lands(tmp_path, capsys, monkeypatch, user):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml")
    refused(capsys, "run", recipe, "--out", "runs/none/../../user", match="not a distillprune run folder")
    assert user.unchanged() and not (tmp_path / "runs").exists()
    code, _ = run(capsys, "run", recipe, "--out", "runs/none/../new")  # a new folder: fine, where it lands
    assert code == 0 and (tmp_path / "runs" / "new" / "run.json").is_file()


# ------------------------------------------------------------------------ the write-time checks on their own
def test_writes_below_a_guarded_folder_never_go_through_a_link(tmp_path, user):
    root = tmp_path / "run"
    root.mkdir()
    guard(root)
    (root / "stages").symlink_to(user.root / "folder", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="stages is a symbolic link"):
        write_text(root / "stages" / "02_finetune" / "model.json", "{}")
    (root / "report.json").symlink_to(user.root / "notes.txt")
    with pytest.raises(UnsafePathError, match="report.json is a symbolic link"):
        atomic_write(root / "report.json", lambda tmp: Path(tmp).write_text("{}"))
    (root / "metrics.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(UnsafePathError, match="metrics.jsonl is a symbolic link"):
        open_append(root / "metrics.jsonl")
    (root / LOCK).symlink_to(tmp_path / "nowhere.lock")
    with pytest.raises(UnsafePathError, match="run.lock is a symbolic link"):
        acquire(root)
    release_all()
    assert user.unchanged() and not (tmp_path / "nowhere.jsonl").exists() and not (tmp_path / "nowhere.lock").exists()


def test_the_forced_run_still_replaces_only_its_own_files(tmp_path, capsys, user):
    """The documented clean outcome of --force: the user's other files stay, the run's files are written."""
    recipe = write_recipe(tmp_path / "r.yaml", stages=[{"type": "train", "epochs": 1}])
    code, _ = run(capsys, "run", recipe, "--out", user.root, "--force")
    assert code == 0 and (user.root / "run.json").is_file()
    after = user.snapshot()
    assert all(after.get(k) == v for k, v in user.before.items())
