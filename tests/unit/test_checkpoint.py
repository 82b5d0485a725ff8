"""Checkpoints without pickle: a pruned model comes back from (weights, spec + history) alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from unit_helpers import randomise_bn, uniform_cut

from distillprune.core.checkpoint import FORMAT, ArchSpec, load_checkpoint, read_meta, save_checkpoint
from distillprune.core.history import op_from_dict, replay
from distillprune.core.io import atomic_write, write_json
from distillprune.errors import CheckpointError, DistillpruneError
from distillprune.models import build_model
from distillprune.prune.config import WidthConfig
from distillprune.prune.depth import remove_block
from distillprune.prune.history import ChannelsOp, RemoveBlockOp, SparsityOp

KW = {"widths": [8, 16, 16], "blocks": [2, 1, 1]}
SHAPE = [1, 8, 8]


def pruned_model() -> tuple[nn.Module, ArchSpec]:
    """digits_cnn with one block removed and channels pruned twice, its history in an ArchSpec."""
    torch.manual_seed(0)
    model = randomise_bn(build_model("digits_cnn", 10, SHAPE, **KW)).eval()
    spec = ArchSpec("digits_cnn", 10, list(SHAPE), copy.deepcopy(KW))
    remove_block(model, "layer1.1")
    spec.history.append(RemoveBlockOp("layer1.1"))
    spec.history += uniform_cut(model, WidthConfig(ratio=0.5, round_to=4), torch.zeros(1, *SHAPE), steps=2)
    spec.history.append(SparsityOp(0.0))  # recorded, nothing to rebuild
    # perturb the weights as training would, so loading must really restore them
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), spec


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_roundtrip_of_a_pruned_model(tmp_path):
    model, spec = pruned_model()
    assert isinstance(model.layer1[1], nn.Identity)
    assert model.conv1.out_channels == 4 and model.layer3[0].conv2.out_channels == 8
    folder = save_checkpoint(tmp_path / "ckpt", model, spec, stage=3, metrics={"acc": 91.5})
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    assert tmp_files(folder) == []

    loaded, spec2, meta = load_checkpoint(folder)
    assert spec2 == spec
    assert meta["format"] == FORMAT and meta["stage"] == 3 and meta["metrics"] == {"acc": 91.5}
    assert not loaded.training
    assert isinstance(loaded.layer1[1], nn.Identity)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = torch.randn(7, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # no pickle anywhere: model.json is plain JSON
    json.loads((folder / "model.json").read_text())


def test_overwriting_a_checkpoint_leaves_no_tmp(tmp_path):
    model, spec = pruned_model()
    save_checkpoint(tmp_path, model, spec)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    save_checkpoint(tmp_path, model, spec)
    assert tmp_files(tmp_path) == []
    loaded, _, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.fc.bias, model.fc.bias)


def test_atomic_write_failure_keeps_old_file_and_no_tmp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def bad(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, bad)
    assert target.read_bytes() == b"old"
    assert tmp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_user_model_needs_base(tmp_path):
    torch.manual_seed(0)
    base = build_model("digits_cnn", 10, SHAPE, **KW)
    model = copy.deepcopy(base)
    remove_block(model, "layer1.0")
    spec = ArchSpec(None, 10, list(SHAPE), history=[RemoveBlockOp("layer1.0")])
    save_checkpoint(tmp_path, model, spec)
    with pytest.raises(CheckpointError, match="base"):
        load_checkpoint(tmp_path)
    loaded, _, _ = load_checkpoint(tmp_path, base=copy.deepcopy(base))
    assert isinstance(loaded.layer1[0], nn.Identity)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("how", ["truncate", "garbage", "empty", "missing"])
def test_corrupt_weights_raise_checkpoint_error(tmp_path, how):
    model, spec = pruned_model()
    save_checkpoint(tmp_path, model, spec)
    f = tmp_path / "model.safetensors"
    raw = f.read_bytes()
    if how == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        f.write_bytes(b"\x13\x37not a safetensors file" * 20)
    elif how == "empty":
        f.write_bytes(b"")
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_missing_model_json(tmp_path):
    model, spec = pruned_model()
    save_checkpoint(tmp_path, model, spec)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="model.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": "other/9", "arch": {}}),
        json.dumps({"format": FORMAT, "arch": {"name": "digits_cnn", "bogus": 1}}),
        json.dumps(
            {
                "format": FORMAT,
                "arch": {
                    "name": "digits_cnn",
                    "num_classes": 10,
                    "input_shape": SHAPE,
                    "kwargs": KW,
                    "history": [{"op": "explode"}],
                },
            }
        ),
    ],
)
def test_bad_model_json(tmp_path, content):
    model, spec = pruned_model()
    save_checkpoint(tmp_path, model, spec)
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_read_meta_checks_format(tmp_path):
    write_json(tmp_path / "model.json", {"format": FORMAT, "arch": {}, "x": 1})
    assert read_meta(tmp_path)["x"] == 1
    write_json(tmp_path / "model.json", {"arch": {}})
    with pytest.raises(CheckpointError, match="format"):
        read_meta(tmp_path)


def test_weights_that_do_not_fit(tmp_path):
    model, spec = pruned_model()
    # the spec without its channel history rebuilds a wider model: shapes mismatch
    no_channels = ArchSpec(
        spec.name, spec.num_classes, spec.input_shape, spec.kwargs, [op for op in spec.history if op.op != "channels"]
    )
    save_checkpoint(tmp_path / "a", model, no_channels)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "a")
    # the spec without the removed block expects weights for layer1.1 that are not there
    no_depth = ArchSpec(spec.name, spec.num_classes, spec.input_shape, spec.kwargs, [])
    torch.manual_seed(0)
    dense = build_model("digits_cnn", 10, SHAPE, **KW)
    remove_block(dense, "layer1.1")
    save_checkpoint(tmp_path / "b", dense, no_depth)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "b")


def test_history_that_does_not_fit_the_model(tmp_path):
    model, spec = pruned_model()
    # one block per stage: there is no layer1.1 to remove (this used to add a stray Identity silently)
    bad = ArchSpec(
        spec.name, spec.num_classes, spec.input_shape, {"widths": [8, 16, 16], "blocks": [1, 1, 1]}, spec.history
    )
    save_checkpoint(tmp_path / "a", model, bad)
    with pytest.raises(DistillpruneError, match="layer1.1"):
        load_checkpoint(tmp_path / "a")
    bad = ArchSpec(spec.name, spec.num_classes, spec.input_shape, spec.kwargs, [RemoveBlockOp("stage9.0")])
    save_checkpoint(tmp_path / "b", model, bad)
    with pytest.raises(DistillpruneError, match="stage9.0"):
        load_checkpoint(tmp_path / "b")
    bad = ArchSpec(
        spec.name, spec.num_classes, spec.input_shape, spec.kwargs, [ChannelsOp([["layer9.conv", True, [0]]])]
    )
    save_checkpoint(tmp_path / "c", model, bad)
    with pytest.raises(DistillpruneError, match="does not fit"):
        load_checkpoint(tmp_path / "c")


def test_replay_skips_sparsity_and_rejects_unknown_ops():
    torch.manual_seed(0)
    m = build_model("digits_cnn", 10, SHAPE, **KW)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    replay(m, SHAPE, [op_from_dict({"op": "sparsity", "value": 0.5})])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    with pytest.raises(CheckpointError, match="unknown history op 'quantise'"):
        op_from_dict({"op": "quantise"})
    with pytest.raises(CheckpointError, match="bad 'sparsity' history entry"):
        op_from_dict({"op": "sparsity", "valu": 0.5})


def test_archspec_dict_roundtrip():
    _, spec = pruned_model()
    d = json.loads(json.dumps(spec.to_dict()))
    assert ArchSpec.from_dict(d) == spec
    with pytest.raises(CheckpointError):
        ArchSpec.from_dict({"name": "x"})
