"""A checkpoint's JSON never runs code: architecture references resolve through our registries, or to the
class file the checkpoint folder carries (sha256 checked) with an explicit opt-in (``trust_code``)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import distillprune as dp
from distillprune.cli import main
from distillprune.errors import CheckpointError, DistillpruneError, ExportError
from distillprune.models.weights import file_sha256

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")

class Net(__import__("torch").nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = __import__("torch").nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def _write_checkpoint(folder: Path, arch: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"format": "distillprune/1", "arch": arch}))
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}, str(folder / "model.safetensors"))
    return folder


def _arch(**ref) -> dict:
    return {"name": "x", "num_classes": 10, "input_shape": [1, 8, 8], "kwargs": {}, "source": "python", "ref": ref}


@pytest.fixture
def imports(monkeypatch):
    """Every module name / file imported while the test runs (nothing may be imported from a checkpoint)."""
    seen: list[str] = []
    real_import, real_spec = importlib.import_module, importlib.util.spec_from_file_location

    def import_module(name, *a, **k):
        seen.append(name)
        return real_import(name, *a, **k)

    def spec_from_file_location(name, location=None, *a, **k):
        seen.append(str(location))
        return real_spec(name, location, *a, **k)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(importlib.util, "spec_from_file_location", spec_from_file_location)
    return seen


def test_a_module_callable_with_a_shell_command_never_runs(tmp_path, imports):
    marker = tmp_path / "PWNED"
    arch = _arch(module="os", attr="system", sha256=file_sha256(os.__file__))
    arch["kwargs"] = {"command": f"touch {marker}"}
    ck = _write_checkpoint(tmp_path / "ck", arch)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as err:
            dp.load_checkpoint(ck, trust_code=trust)
        assert "\n" not in str(err.value) and "Python code (os:system)" in str(err.value)
    assert not marker.exists() and "os" not in imports


def test_a_file_outside_the_folder_is_never_imported(tmp_path, imports):
    marker = tmp_path / "RAN"
    evil = tmp_path / "elsewhere" / "evil.py"
    evil.parent.mkdir()
    evil.write_text(EVIL.format(marker=str(marker)))
    without_sha = _write_checkpoint(tmp_path / "a", _arch(file=str(evil), attr="Net"))
    with_sha = _write_checkpoint(tmp_path / "b", _arch(file=str(evil), attr="Net", sha256=file_sha256(evil)))
    climbing = _write_checkpoint(
        tmp_path / "c", _arch(file=str(evil), attr="Net", sha256=file_sha256(evil), bundled="../elsewhere/evil.py")
    )
    absolute = _write_checkpoint(
        tmp_path / "d", _arch(file=str(evil), attr="Net", sha256=file_sha256(evil), bundled=str(evil))
    )
    (tmp_path / "e" / "code").mkdir(parents=True)
    (tmp_path / "e" / "code" / "evil.py").symlink_to(evil)  # a link inside that leads out
    linked = _write_checkpoint(
        tmp_path / "e", _arch(file=str(evil), attr="Net", sha256=file_sha256(evil), bundled="code/evil.py")
    )
    with pytest.raises(CheckpointError, match="records no sha256"):
        dp.load_checkpoint(without_sha, trust_code=True)
    for ck in (with_sha, climbing, absolute, linked):
        with pytest.raises(CheckpointError, match="would run that code.*--trust-code"):
            dp.load_checkpoint(ck)
        with pytest.raises(CheckpointError, match="inside the checkpoint folder"):
            dp.load_checkpoint(ck, trust_code=True)
    assert not marker.exists() and str(evil) not in imports


def test_the_carried_file_is_imported_only_with_trust_code(tmp_path):
    marker = tmp_path / "RAN"
    src = tmp_path / "net.py"
    src.write_text(EVIL.format(marker=str(marker)))
    sha = file_sha256(src)
    ck = _write_checkpoint(tmp_path / "ck", _arch(file="/gone/net.py", attr="Net", sha256=sha, bundled="code/net.py"))
    (ck / "code").mkdir()
    (ck / "code" / "net.py").write_bytes(src.read_bytes())
    with pytest.raises(CheckpointError, match="would run that code"):
        dp.load_checkpoint(ck)
    assert not marker.exists()
    model, spec, _ = dp.load_checkpoint(ck, trust_code=True)
    assert marker.exists() and isinstance(model, nn.Module)
    dp.save_checkpoint(tmp_path / "again", model, spec)  # a checkpoint saved from it carries the same file
    assert file_sha256(tmp_path / "again" / "code" / "net.py") == sha


def test_in_process_fields_cannot_be_smuggled_in_the_json(tmp_path):
    arch = {**_arch(module="os", attr="getcwd", sha256="0" * 64), "trusted": True}
    with pytest.raises(CheckpointError, match="unknown keys \\['trusted'\\]"):
        dp.load_checkpoint(_write_checkpoint(tmp_path / "ck", arch))


def test_zoo_kwargs_that_load_files_are_refused(tmp_path):
    arch = {"name": "timm", "num_classes": 10, "input_shape": [3, 32, 32], "source": "zoo"}
    arch["kwargs"] = {"arch": "resnet18", "checkpoint_path": str(tmp_path / "x.pth")}
    with pytest.raises(CheckpointError, match="would load files or download"):
        dp.load_checkpoint(_write_checkpoint(tmp_path / "ck", arch))


SOURCES = st.sampled_from(["python", "zoo", "hf", "nope", ""])
TEXT = st.one_of(
    st.sampled_from(["os", "subprocess", "builtins", "os.path", "code/x.py", "../x.py", "/etc/passwd", "__main__"]),
    st.text(max_size=12),
)
REF = st.dictionaries(st.sampled_from(["module", "file", "attr", "sha256", "bundled"]), TEXT, max_size=5)
ARCH = st.fixed_dictionaries(
    {"name": st.one_of(st.none(), TEXT), "num_classes": st.integers(0, 12), "input_shape": st.just([1, 8, 8])},
    optional={
        "source": SOURCES,
        "ref": REF,
        "kwargs": st.dictionaries(st.sampled_from(["command", "arch", "width", "path"]), TEXT, max_size=2),
    },
)
ALLOWED = ("torchvision", "timm", "transformers", "distillprune")  # reached through our registries only


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=ARCH, trust=st.booleans())
def test_fuzz_hostile_checkpoints_resolve_no_callable_outside_the_registries(tmp_path, imports, arch, trust):
    imports.clear()
    ck = _write_checkpoint(tmp_path / "fuzz", arch)
    try:
        dp.load_checkpoint(ck, trust_code=trust)
    except DistillpruneError as e:
        assert "\n" not in str(e)
    outside = [n for n in imports if not n.startswith(ALLOWED)]
    assert not outside, f"imported {outside} from {arch}"


def _external_onnx(folder: Path, location: str) -> Path:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 10], np.zeros(640, np.float32).tobytes(), raw=True)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "2560")):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [w],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../../../etc/hostname", "/etc/hostname", "sub/../../x.bin"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, capsys, location):
    from distillprune.export.onnx import check_external_data

    path = _external_onnx(tmp_path / "m", location)
    with pytest.raises(ExportError, match="outside the model's folder"):
        check_external_data(path)
    assert main(["bench", str(path)]) == 2
    assert "outside the model's folder" in capsys.readouterr().err


def test_onnx_external_data_beside_the_model_is_read(tmp_path):
    from distillprune.export.onnx import run_onnx

    path = _external_onnx(tmp_path / "m", "w.bin")
    (tmp_path / "m" / "w.bin").write_bytes(np.ones(640, np.float32).tobytes())
    out = run_onnx(path, np.ones((2, 1, 8, 8), np.float32))
    assert out.shape == (2, 10) and float(out[0, 0]) == 64.0


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
"""


def _recipe(tmp_path: Path, model: dict, stages: list) -> Path:
    import yaml

    r = {
        "name": "trust",
        "model": model,
        "data": {"source": "digits", "limit_train": 64, "limit_test": 32, "batch_size": 32},
        "runtime": {"progress": False, "tensorboard": False},
        "measure": {"enabled": False},
        "stages": stages,
    }
    path = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


@pytest.mark.slow
def test_runs_refuse_untrusted_checkpoints_and_resume_only_their_own_code(tmp_path, capsys):
    net = tmp_path / "net.py"
    net.write_text(textwrap.dedent(NET))
    recipe = _recipe(tmp_path, {"python": f"{net}:Net"}, [{"type": "train", "epochs": 1}, {"type": "evaluate"}])
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 0
    stage = tmp_path / "run" / "stages" / "01_train"
    assert (stage / "code" / "net.py").is_file()

    # a checkpoint the recipe names: its carried code runs only with --trust-code
    uses = _recipe(tmp_path, {"checkpoint": str(stage)}, [{"type": "evaluate"}])
    assert main(["validate", str(uses)]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert main(["run", str(uses), "--out", str(tmp_path / "r2")]) == 2
    assert not (tmp_path / "r2" / "stages").exists()
    teacher = _recipe(
        tmp_path,
        {"name": "mlp", "kwargs": {"hidden": [16]}},
        [{"type": "distill", "epochs": 1, "teacher": str(stage)}],
    )
    assert main(["run", str(teacher), "--out", str(tmp_path / "r3")]) == 2
    assert "would run that code" in capsys.readouterr().err
    assert main(["run", str(uses), "--out", str(tmp_path / "r4"), "--trust-code"]) == 0

    # --resume reloads the run's own class (the recipe vouches for it), but not code swapped into model.json
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, "completed": 1, "kind": "train"}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--resume"]) == 0
    meta = json.loads((stage / "model.json").read_text())
    meta["arch"]["ref"] = {"module": "os", "attr": "system", "sha256": file_sha256(os.__file__)}
    meta["arch"]["kwargs"] = {"command": f"touch {tmp_path / 'PWNED'}"}
    (stage / "model.json").write_text(json.dumps(meta))
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, "completed": 1, "kind": "train"}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert not (tmp_path / "PWNED").exists()
    assert "would run that code" in capsys.readouterr().err
