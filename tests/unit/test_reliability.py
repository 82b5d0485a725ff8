"""Regression tests of issue 11 (bad input from outside): each defect found there, fixed and pinned here.

Recipes (YAML strictness, encodings, --set), data files, run folders (re-run, resume, corrupt state,
recipe changes), output paths confined to the run folder, atomic writes keeping the umask's mode,
validation that builds the models and checks them against the data, epoch checkpoints that cannot pair
one epoch's weights with another's record.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distillprune.core.io import write_text
from distillprune.data import DataConfig, load_data
from distillprune.errors import CheckpointError, DataError, DistillpruneError, RecipeError
from distillprune.pipeline import compress
from distillprune.pipeline.preflight import preflight
from distillprune.pipeline.rundir import prepare
from distillprune.pipeline.state import confined
from distillprune.recipes import load_recipe
from distillprune.recipes.schema import Recipe
from distillprune.recipes.yaml_io import parse_yaml
from distillprune.report.report import CompressionReport
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitRun

TINY = {
    "name": "tiny",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "limit_train": 64, "limit_test": 32, "batch_size": 32},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False},
    "stages": [{"type": "train", "epochs": 1}, {"type": "evaluate"}],
}


def recipe(**changes) -> Recipe:
    return Recipe.model_validate({**TINY, **changes})


def write_recipe(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# ------------------------------------------------------------------------------------------- recipes
def test_duplicate_keys_are_rejected_with_the_line(tmp_path):
    p = write_recipe(tmp_path, "name: a\nseed: 1\nname: b\nstages: [{type: evaluate}]\n")
    with pytest.raises(RecipeError, match=r"line 3.*duplicate key 'name' \(first given on line 1\)"):
        load_recipe(p)
    nested = write_recipe(tmp_path, "stages:\n  - type: train\n    epochs: 1\n    epochs: 2\n", "n.yaml")
    with pytest.raises(RecipeError, match="line 4.*duplicate key 'epochs'"):
        load_recipe(nested)


def test_yaml_syntax_errors_name_the_line(tmp_path):
    p = write_recipe(tmp_path, "name: a\nstages:\n  - type: evaluate\n   bad: [\n")
    with pytest.raises(RecipeError, match=r"r.yaml: not valid YAML at line 4, column \d+"):
        load_recipe(p)


def test_binary_recipe_is_one_line(tmp_path):
    p = write_recipe(tmp_path, b"\xc1\x00\xff name: x")
    with pytest.raises(RecipeError, match=r"not UTF-8 text \(byte 0xc1 at offset 0\)"):
        load_recipe(p)


def test_set_value_that_is_not_yaml(tmp_path):
    p = write_recipe(tmp_path, "stages: [{type: evaluate}]\n")
    with pytest.raises(RecipeError, match=r"--set name: not valid YAML at line 1"):
        load_recipe(p, ["name=[unclosed"])
    with pytest.raises(RecipeError, match="is not an index"):
        load_recipe(p, ["stages.²=1"])  # a unicode digit is not an index


def test_alias_bombs_and_deep_nesting_are_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    with pytest.raises(RecipeError, match="expands to more than"):
        parse_yaml(bomb, "bomb.yaml")
    with pytest.raises(RecipeError):
        parse_yaml("[" * 5000 + "]" * 5000, "deep.yaml")


def test_stages_of_the_wrong_type_and_root_errors(tmp_path):
    p = write_recipe(tmp_path, "stages: 5\n")
    with pytest.raises(RecipeError, match=r"stages: Input should be a valid list"):
        load_recipe(p)
    p = write_recipe(tmp_path, "stages: [{type: trian}]\n")
    with pytest.raises(RecipeError, match=r"^[^<]*stages.0.type: unknown stage type 'trian'"):
        load_recipe(p)


# ---------------------------------------------------------------------------------------------- data
def _npz(path: Path, **over) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((40, 1, 4, 4), dtype=np.float32),
        "y_train": rng.integers(0, 3, 40),
        "x_test": rng.random((10, 1, 4, 4), dtype=np.float32),
        "y_test": rng.integers(0, 3, 10),
    }
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def _load(path: Path):
    return load_data(DataConfig(source="npz", path=str(path)))


def test_truncated_npz(tmp_path):
    p = _npz(tmp_path / "d.npz")
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="not a readable .npz file"):
        _load(p)


def test_damaged_npz_member(tmp_path):
    p = _npz(tmp_path / "d.npz")
    raw = bytearray(p.read_bytes())
    at = raw.index(b"x_train.npy") + 120  # inside the first member's data
    raw[at : at + 40] = b"\xff" * 40
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError):
        _load(p)


def test_text_file_as_npz_does_not_suggest_pickle(tmp_path):
    p = tmp_path / "t.npz"
    p.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DataError, match="not a readable .npz file") as e:
        _load(p)
    assert "pickle" not in str(e.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    p = _npz(tmp_path / "d.npz", y_train=np.array([object()] * 40, dtype=object))
    with pytest.raises(DataError, match="holds Python objects") as e:
        _load(p)
    assert "allow_pickle" not in str(e.value)


def test_nan_in_the_data_says_the_data_has_nan(tmp_path):
    x = np.random.default_rng(0).random((40, 1, 4, 4), dtype=np.float32)
    x[7, 0, 1, 2] = np.nan
    with pytest.raises(DataError, match="the data has NaN") as e:
        _load(_npz(tmp_path / "d.npz", x_train=x))
    assert "learning rate" not in str(e.value) and "index 7" in str(e.value)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.r_[-1, np.zeros(39, np.int64)], "label -1 at index 0 is out of range"),
        (np.r_[10**9, np.zeros(39, np.int64)], "labels go up to 1000000000"),
        (np.full(40, 1.5), "not a whole number"),
        (np.array(["a"] * 40), "expected integer class indices"),
        (np.zeros((40, 2), np.int64), "expected one label per sample"),
    ],
)
def test_bad_labels(tmp_path, labels, match):
    with pytest.raises(DataError, match=match):
        _load(_npz(tmp_path / "d.npz", y_train=labels))


@pytest.mark.parametrize(
    "over",
    [
        {"x_train": np.zeros((0, 1, 4, 4), np.float32), "y_train": np.zeros(0, np.int64)},
        {"x_test": np.zeros((0, 16), np.float32), "y_test": np.zeros(0, np.int64)},
        {"x_train": np.float32(1.0)},
        {"x_train": np.zeros((40, 0), np.float32)},
        {"y_train": np.zeros(5, np.int64)},
        {"x_train": np.array(["a"] * 40)},
        {"x_train": np.zeros((40, 16), np.complex64)},
    ],
)
def test_empty_or_misshapen_data(tmp_path, over):
    with pytest.raises(DataError):
        _load(_npz(tmp_path / "d.npz", **over))


# -------------------------------------------------------------------------------------- run folders
def test_out_that_is_a_file_or_cannot_be_created(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DistillpruneError, match="is a file"):
        prepare(f, False, recipe())
    with pytest.raises(DistillpruneError, match="cannot create run folder"):
        prepare(f / "sub", False, recipe())
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DistillpruneError, match="not writable|cannot create"):
            prepare(ro / "run", False, recipe())
    finally:
        ro.chmod(0o700)


def test_a_run_that_completed_nothing_can_be_rerun_and_resumed(tmp_path):
    out = tmp_path / "run"
    bad = recipe(
        data={**TINY["data"], "limit_train": 64}, stages=[{"type": "train", "epochs": 1, "optimizer": {"lr": 1e30}}]
    )
    with pytest.raises(DistillpruneError, match="loss is"):
        compress(bad, out, quiet=True)
    assert (out / "run.json").exists() and not (out / "state.json").exists()
    report = compress(recipe(), out, quiet=True)  # no --resume, no "already exists"
    assert [s.type for s in report.stages] == ["train", "evaluate"]
    with pytest.raises(DistillpruneError, match="holds a run with 2 completed stage"):
        compress(recipe(), out, quiet=True)
    # a fresh marker with nothing done resumes from the start
    fresh = tmp_path / "fresh"
    prepare(fresh, False, recipe())
    assert [s.type for s in compress(recipe(), fresh, resume=True, quiet=True).stages] == ["train", "evaluate"]


def test_a_foreign_folder_is_never_cleared(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.json").write_text('{"keep": true}')
    with pytest.raises(DistillpruneError, match="not a distillprune run folder"):
        prepare(out, False, recipe())
    assert (out / "report.json").read_text() == '{"keep": true}'


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    compress(recipe(), out, quiet=True)
    return out


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ("{not json", "corrupt run state"),
        ("[]", "corrupt run state"),
        ('{"completed": "2", "kind": "evaluate"}', "corrupt run state"),
        ('{"completed": 2}', "missing key 'kind'"),
        ('{"completed": 7, "kind": "evaluate"}', "says 7 stages completed but the recipe has 2"),
        ('{"completed": 2, "kind": "../../x"}', "completed as '../../x' but the recipe's stage 2 is 'evaluate'"),
        ('{"completed": -1, "kind": "train"}', "says -1 stages completed"),
    ],
)
def test_corrupt_state_json(done_run, tmp_path, state, match):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    (run / "state.json").write_text(state)
    with pytest.raises(CheckpointError, match=match):
        compress(recipe(), run, resume=True, quiet=True)


def test_resume_with_another_recipe_is_refused(done_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    with pytest.raises(DistillpruneError, match=r"differs .* at stages.0.epochs \(1 then, 2 now\)"):
        compress(recipe(stages=[{"type": "train", "epochs": 2}, {"type": "evaluate"}]), run, resume=True, quiet=True)
    # how it runs may change, and stages may be appended
    more = recipe(runtime={**TINY["runtime"], "threads": 2}, stages=[*TINY["stages"], {"type": "evaluate"}])
    assert [s.index for s in compress(more, run, resume=True, quiet=True).stages] == [1, 2, 3]


def test_report_saved_before_state_json_is_not_doubled_on_resume(done_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    (run / "state.json").write_text(json.dumps({"completed": 1, "kind": "train"}))  # killed before state.json
    report = compress(recipe(), run, resume=True, quiet=True)
    assert [s.index for s in report.stages] == [1, 2]


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "null",
        '"x"',
        '{"recipe": "a", "stages": "x"}',
        '{"recipe": "a", "stages": [1]}',
        '{"recipe": 3}',
        '{"recipe": "a", "stages": [{"index": "a"}]}',
        "{bad",
    ],
)
def test_report_json_that_is_not_a_report(tmp_path, text):
    (tmp_path / "report.json").write_text(text)
    with pytest.raises(DistillpruneError, match="not a readable report.json"):
        CompressionReport.load(tmp_path)


# ------------------------------------------------------------------------------- files and folders
@pytest.mark.parametrize(
    "name",
    [
        "../x.onnx",
        "/tmp/x.onnx",
        "a/../../x",
        "",
        ".",
        "stages/01_train/model.json",
        "report.json",
        "state.json",
        "run.json",
        "teacher",
        "sub/",
        "a\0b",
    ],
)
def test_output_names_stay_in_the_run_folder(tmp_path, name):
    with pytest.raises(RecipeError, match="stages.3.filename"):
        confined(tmp_path, name, "stages.3.filename")


def test_output_names_through_a_symlink_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "link").symlink_to(outside)
    with pytest.raises(RecipeError, match="resolves outside"):
        confined(run, "link/model.onnx", "stages.0.filename")
    assert confined(run, "sub/model.onnx", "x") == run / "sub" / "model.onnx"


def test_a_recipe_filename_outside_the_run_fails_before_training(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    bad = recipe(stages=[{"type": "train", "epochs": 1}, {"type": "export", "filename": "../victim.txt"}])
    with pytest.raises(RecipeError, match=r"stages.1.filename: '../victim.txt'"):
        compress(bad, tmp_path / "run", quiet=True)
    assert victim.read_text() == "keep"
    assert not (tmp_path / "run" / "stages").exists()  # nothing trained


def test_atomic_writes_keep_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# -------------------------------------------------------------------------------------- validation
def _digits():
    return load_data(DataConfig(source="digits", limit_train=32, limit_test=16))


def test_student_kwargs_that_contradict_the_data_fail_validation():
    r = recipe(
        stages=[
            {"type": "train", "epochs": 1},
            {
                "type": "distill",
                "epochs": 1,
                "student": {"name": "resnet", "kwargs": {"widths": [8, 16], "blocks": [1, 1, 1]}},
            },
        ]
    )
    with pytest.raises(RecipeError, match=r"stages.1.student: model 'resnet': bad kwargs"):
        preflight(r, _digits())
    r = recipe(stages=[{"type": "distill", "epochs": 1, "student": {"name": "mlp", "kwargs": {"hidden": [-3]}}}])
    with pytest.raises(RecipeError, match="stages.0.student"):
        preflight(r, _digits())


def test_models_too_big_for_memory_fail_validation_without_allocating():
    r = recipe(model={"name": "mlp", "kwargs": {"hidden": [10**6, 10**6]}})
    with pytest.raises(RecipeError, match="GiB of fp32 weights"):
        preflight(r, _digits())


def test_a_checkpoint_for_other_data_fails_validation(tmp_path):
    from distillprune.core.checkpoint import ArchSpec, save_checkpoint
    from distillprune.models import build_model

    spec = ArchSpec("mlp", 3, [1, 4, 4], {"hidden": [8]})
    save_checkpoint(tmp_path / "ck", build_model("mlp", 3, (1, 4, 4), hidden=[8]), spec)
    with pytest.raises(DataError, match=r"model.checkpoint: checkpoint .* inputs \(1, 4, 4\) and 3 classes"):
        preflight(recipe(model={"name": "mlp", "checkpoint": str(tmp_path / "ck")}), _digits())
    teacher = {"type": "distill", "epochs": 1, "distill": {"teacher": str(tmp_path / "ck")}}
    with pytest.raises(DataError, match="stages.0.distill.teacher"):
        preflight(recipe(stages=[teacher]), _digits())
    with pytest.raises(CheckpointError, match="stages.0.distill.teacher"):
        preflight(recipe(stages=[{**teacher, "distill": {"teacher": str(tmp_path / "none")}}]), _digits())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_fails_validation():
    with pytest.raises(RecipeError, match="runtime.device: 'cuda' but CUDA is not available"):
        preflight(recipe(runtime={**TINY["runtime"], "device": "cuda"}), _digits())


def test_preflight_keeps_the_random_state():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    preflight(
        recipe(
            model={"name": "digits_cnn", "kwargs": {"widths": [8, 8, 8], "blocks": [1, 1, 1]}},
            stages=[{"type": "prune", "width": {"ratio": 0.5, "round_to": 4}}],
        ),
        _digits(),
    )
    assert torch.equal(before, torch.get_rng_state())


def test_pruning_requests_that_cannot_happen_fail_validation():
    cnn = {"name": "digits_cnn", "kwargs": {"widths": [16, 16, 16], "blocks": [1, 1, 1]}}
    with pytest.raises(RecipeError, match="stages.1.width: width pruning with ratio 0.05 and round_to 8 removes no"):
        preflight(
            recipe(
                model=cnn,
                stages=[{"type": "train", "epochs": 1}, {"type": "prune", "width": {"ratio": 0.05, "round_to": 8}}],
            ),
            _digits(),
        )
    with pytest.raises(
        RecipeError,
        match=r"stages.0.depth.blocks: 5 blocks to remove but model 'digits_cnn' has 1 "
        r"removable residual blocks \(layer1.0\)",
    ):
        preflight(recipe(model=cnn, stages=[{"type": "prune", "depth": {"blocks": 5}}]), _digits())


def test_stage_errors_name_the_stage(monkeypatch):
    r = recipe(
        stages=[
            {"type": "train", "epochs": 1},
            {"type": "prune", "width": {"ratio": 0.5, "layers": {"include": ["nosuch.*"]}}},
        ]
    )
    with pytest.raises(DistillpruneError, match=r"^stages.1 \(prune\): width.layers: pattern 'nosuch.\*'"):
        preflight(r, _digits())  # before training
    import distillprune.pipeline.run as run_mod

    monkeypatch.setattr(run_mod, "preflight", lambda *a, **k: None)  # and at run time, where it is raised
    with pytest.raises(DistillpruneError, match=r"^stages.1 \(prune\): width.layers: pattern 'nosuch.\*'"):
        compress(r, quiet=True)


# ------------------------------------------------------------------------------- epoch checkpoints
def test_epoch_checkpoint_carries_its_own_record(tmp_path):
    from distillprune.distill.distiller import CrossEntropy
    from distillprune.models import build_model
    from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig
    from distillprune.train.trainer import FitSettings, fit

    data = _digits()
    rt = RuntimeConfig(progress=False, tensorboard=False)
    settings = FitSettings(3, OptimizerConfig(lr=0.05), ScheduleConfig(name="constant"))

    def run(ckpt, epochs_done=None):
        torch.manual_seed(0)
        m = build_model("mlp", 10, (1, 8, 8), hidden=[8])
        s = settings if epochs_done is None else FitSettings(epochs_done, settings.optimizer, settings.schedule)
        fit(
            m,
            data,
            s,
            CrossEntropy(),
            context=Context(rt, LoaderOptions(batch_size=16)),
            run=FitRun(ckpt_dir=ckpt, resume=True),
        )
        return m

    full = run(tmp_path / "full")
    cut = tmp_path / "cut"
    run(cut, 1)
    stale = (cut / "last.json").read_text()  # epoch 1's record
    run(cut, 2)
    (cut / "last.json").write_text(stale)  # as if killed after epoch 2's weights, before its last.json
    meta = json.loads(__import__("safetensors").safe_open(str(cut / "last.safetensors"), "pt").metadata()["meta"])
    assert meta["epoch"] == 2
    resumed = run(cut)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert load_file(str(cut / "last.safetensors"))


def test_sizes_the_data_bounds_fail_validation():
    with pytest.raises(RecipeError, match="data.augment.crop_padding: 100 pixels around 8x8 images"):
        preflight(recipe(data={**TINY["data"], "augment": {"crop_padding": 100}}), _digits())
    with pytest.raises(RecipeError, match=r"measure.batch_sizes: a batch of 1000000000 inputs .* GiB"):
        preflight(recipe(measure={"enabled": False, "batch_sizes": [10**9]}), _digits())
