"""Models from the user's artefacts: their class (``model.python``), their weights (``.pt`` / ``.safetensors``),
a new head, a teacher with weights, their input statistics; each failure is one line."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import distillprune as dp
from distillprune.core.extras import ExtraMissing, import_extra
from distillprune.distill.config import DistillConfig
from distillprune.distill.modes import resolve_teacher
from distillprune.errors import CheckpointError, DistillpruneError, RecipeError

NET = """
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.conv(x)
        x = x + self.block(x)
        return self.fc(x.mean((2, 3)))


def small(width=4):  # a factory without num_classes: its classifier has 7 outputs
    net = MyNet(width, 7)
    return net
"""


@pytest.fixture
def net_file(tmp_path):
    p = tmp_path / "my_net.py"
    p.write_text(textwrap.dedent(NET))
    return p


def test_python_model_rebuilds_from_its_file_without_base(net_file, tmp_path):
    model, spec = dp.make_model({"python": f"{net_file}:MyNet", "kwargs": {"width": 8}}, 10, (1, 8, 8))
    assert spec.source == "python" and spec.ref["file"] == str(net_file) and len(spec.ref["sha256"]) == 64
    dp.prune_(
        model,
        {"width": {"ratio": 0.5, "round_to": 4}, "depth": {"blocks": 1}},
        dp.Examples(torch.randn(4, 1, 8, 8), 10),
        history=spec,
    )
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    assert (tmp_path / "ck" / "code" / "my_net.py").read_bytes() == net_file.read_bytes()  # the folder carries it
    with pytest.raises(CheckpointError, match="would run that code.*--trust-code"):
        dp.load_checkpoint(tmp_path / "ck")  # a checkpoint's JSON alone never imports code
    net_file.unlink()  # the copy inside the folder is what trust_code imports
    back, _, _ = dp.load_checkpoint(tmp_path / "ck", trust_code=True)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(back(x), model.eval()(x))


def test_a_changed_or_missing_class_file_is_one_line(net_file, tmp_path):
    model, spec = dp.make_model({"python": f"{net_file}:MyNet"}, 10, (1, 8, 8))
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    carried = tmp_path / "ck" / "code" / "my_net.py"
    carried.write_text(carried.read_text() + "\n# edited\n")
    with pytest.raises(CheckpointError, match="no file with the recorded sha256.*base="):
        dp.load_checkpoint(tmp_path / "ck", trust_code=True)
    assert dp.load_checkpoint(tmp_path / "ck", base=model)[0] is not None  # the way out
    carried.unlink()
    with pytest.raises(CheckpointError, match="no file with the recorded sha256"):
        dp.load_checkpoint(tmp_path / "ck", trust_code=True)


@pytest.mark.parametrize(
    "target, match",
    [
        ("nowhere.py:MyNet", "file not found"),
        ("{f}:MyNt", "has no 'MyNt' \\(did you mean 'MyNet'\\?\\)"),
        ("{f}", "expected 'path/to/file.py:ClassOrFactory'"),
    ],
)
def test_bad_python_targets_are_one_line(net_file, target, match):
    with pytest.raises(DistillpruneError, match=match) as err:
        dp.make_model({"python": target.format(f=net_file)}, 10, (1, 8, 8))
    assert "\n" not in str(err.value)


def test_python_target_may_be_the_class_itself(tmp_path):
    import unit_helpers

    model, spec = dp.make_model({"python": unit_helpers.tiny_digits_cnn}, 10, (1, 8, 8))
    assert spec.name == "unit_helpers:tiny_digits_cnn" and spec.ref["module"] == "unit_helpers"
    assert isinstance(spec.build(), nn.Module)  # built here from the caller's own config: trusted
    stored = dp.ArchSpec.from_dict(spec.to_dict())  # the same spec read back from JSON is data
    with pytest.raises(DistillpruneError, match="would run that code"):
        stored.build()
    with dp.code_trust(True), pytest.raises(DistillpruneError, match="inside the checkpoint folder"):
        stored.build()  # opted in, but an installed module is not code the checkpoint carries
    dp.save_checkpoint(tmp_path / "ck", model, spec)  # the folder carries the module's file
    assert (tmp_path / "ck" / "code" / "unit_helpers.py").is_file()
    assert isinstance(dp.load_checkpoint(tmp_path / "ck", trust_code=True)[0], nn.Module)
    with dp.code_trust(vouched={spec.ref["sha256"]: "unit_helpers"}):  # a run whose recipe names the module
        assert isinstance(stored.build(), nn.Module)
    with (
        dp.code_trust(vouched={spec.ref["sha256"]: "other_module"}),
        pytest.raises(DistillpruneError, match="not this one"),
    ):
        stored.build()  # the stored reference names another module than the caller's: not imported


@pytest.mark.parametrize("fmt", ["pt", "wrapped.pt", "safetensors"])
def test_weights_load_from_pt_and_safetensors(net_file, tmp_path, fmt):
    src, _ = dp.make_model({"python": f"{net_file}:MyNet"}, 10, (1, 8, 8))
    state = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if fmt == "wrapped.pt" else state, path)
    torch.manual_seed(1)
    model, spec = dp.make_model({"python": f"{net_file}:MyNet", "weights": str(path)}, 10, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), src.eval()(x))
    assert spec.ref["weights"] == str(path)


def test_weights_that_do_not_fit_name_the_first_keys_and_shapes(net_file, tmp_path):
    src, _ = dp.make_model({"python": f"{net_file}:MyNet", "kwargs": {"width": 4}}, 10, (1, 8, 8))
    state = src.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as err:
        dp.make_model({"python": f"{net_file}:MyNet", "weights": str(tmp_path / "w.pt")}, 10, (1, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model.weights: ")
    assert "missing fc.bias 10" in msg and "unexpected extra.weight 3" in msg
    assert "conv.0.weight: file 4x1x3x3 vs model 8x1x3x3" in msg and "more)" in msg


def test_pickled_objects_are_refused(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module, not a state_dict
    with pytest.raises(CheckpointError, match="weights_only=True"):
        dp.make_model({"name": "mlp", "weights": str(tmp_path / "module.pt")}, 10, (1, 8, 8))


def test_a_state_dict_given_as_checkpoint_points_to_weights(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="give it as weights"):
        dp.load_checkpoint(tmp_path / "w.pt")


def test_head_replaces_the_classifier_and_keeps_the_rest(net_file, tmp_path):
    src = dp.make_model({"python": f"{net_file}:small"}, 10, (1, 8, 8))[0]  # 7 classes in the file
    torch.save(src.state_dict(), tmp_path / "w.pt")
    cfg = {"python": f"{net_file}:small", "weights": str(tmp_path / "w.pt"), "head": {}}
    model, spec = dp.make_model(cfg, 10, (1, 8, 8))
    assert model.fc.out_features == 10 and [op.op for op in spec.history] == ["classifier"]
    torch.testing.assert_close(model.conv[0].weight, src.conv[0].weight)
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    back = dp.load_checkpoint(tmp_path / "ck", trust_code=True)[0]
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back(x), model.eval()(x))
    seven = dp.make_model({"python": f"{net_file}:MyNet"}, 7, (1, 8, 8))[0]  # trained for 7 classes
    torch.save(seven.state_dict(), tmp_path / "w7.pt")
    mine = {"python": f"{net_file}:MyNet", "weights": str(tmp_path / "w7.pt")}
    with pytest.raises(CheckpointError, match="shape fc.weight: file 7x8 vs model 10x8, fc.bias: file 7 vs model 10"):
        dp.make_model(mine, 10, (1, 8, 8))
    model, spec = dp.make_model({**mine, "head": {"num_classes": 10}}, 10, (1, 8, 8))  # built for 10: no op
    assert model.fc.out_features == 10 and spec.history == []
    torch.testing.assert_close(model.block[0].weight, seven.block[0].weight)


class VGGish(nn.Module):
    """torchvision VGG's shape: features, a fixed 7x7 adaptive pool, flatten, a classifier of Linears."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(8 * 49, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_an_enlarging_pool_folds_into_the_classifier_exactly(tmp_path):
    from distillprune.models.head import fold_small_pool

    for hw in (8, 16):  # features 1x1 and 2x2: the 7x7 pool repeats them
        torch.manual_seed(0)
        m = VGGish().eval()
        x = torch.randn(4, 3, hw, hw)
        ref = m(x)
        op = fold_small_pool(m, (3, hw, hw))
        assert op is not None and op.hw == [hw // 8, hw // 8] and isinstance(m.avgpool, nn.Identity)
        assert m.classifier[0].in_features == 8 * (hw // 8) ** 2
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
    assert fold_small_pool(VGGish(), (3, 64, 64)) is None  # 8x8 features: the pool shrinks, nothing to fold


def test_teacher_with_weights_in_a_recipe(net_file, tmp_path):
    src = dp.make_model({"python": f"{net_file}:MyNet"}, 10, (1, 8, 8))[0].eval()
    torch.save(src.state_dict(), tmp_path / "t.pt")
    cfg = DistillConfig(teacher={"python": f"{net_file}:MyNet", "weights": str(tmp_path / "t.pt")})
    teacher = resolve_teacher(cfg, lambda: None, 10, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(teacher(x), src(x))
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="needs its trained weights"):
        DistillConfig(teacher={"python": f"{net_file}:MyNet"})


def test_recipe_model_keys_are_checked():
    from distillprune.core.config import validate
    from distillprune.models.config import ModelConfig

    with pytest.raises(RecipeError, match="checkpoint is a whole model"):
        validate(ModelConfig, {"checkpoint": "x", "weights": "w.pt"}, where="model")
    with pytest.raises(RecipeError, match="either name .* or python"):
        validate(ModelConfig, {"name": "mlp", "python": "a.py:B"}, where="model")


def test_data_normalize_overrides_the_computed_statistics():
    d = dp.load_data(dp.DataConfig(source="digits", normalize={"mean": [0.25], "std": [0.5]}))
    assert d.mean.tolist() == [0.25] and d.std.tolist() == [0.5]
    computed = dp.load_data(dp.DataConfig(source="digits"))
    assert computed.mean.tolist() != [0.25]
    with pytest.raises(DistillpruneError, match="gives 3 means/stds but the inputs have 1 channels"):
        dp.load_data(dp.DataConfig(source="digits", normalize={"mean": [0, 0, 0], "std": [1, 1, 1]}))


def test_a_broken_extra_is_one_line_naming_the_fix(monkeypatch):
    import importlib

    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ExtraMissing) as err:
        import_extra("torchvision", "vision", "model 'torchvision'")
    msg = str(err.value)
    assert "\n" not in msg and "operator torchvision::nms does not exist" in msg and "make vision" in msg


def test_a_missing_extra_is_one_line_naming_the_fix():
    with pytest.raises(ExtraMissing, match="not installed .*fix: pip install"):
        import_extra("distillprune_no_such_module", "hf")
