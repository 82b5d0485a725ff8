"""Every example of docs/your-model.md runs: the recipes through the CLI (``distillprune run``), the Python one
as written. The user's weights files are written first, as their training script would; the CIFAR recipes get
a tiny generated data set instead of the pack and one epoch per stage. The torchvision/timm examples run
where the vision extra works (the vision venv) and skip, saying why, elsewhere."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import distillprune as dp
from distillprune.cli import main
from distillprune.core.extras import ExtraMissing, import_extra

DOC = Path(__file__).resolve().parents[2] / "docs" / "your-model.md"
EXAMPLES = dict(re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S))


def test_the_doc_has_its_examples():
    assert set(EXAMPLES) == {
        "torchvision-weights",
        "torchvision-head",
        "timm",
        "my_net.py",
        "own-class-recipe",
        "own-class-python",
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_net.py").write_text(EXAMPLES["my_net.py"])
    torch.manual_seed(0)
    trained, _ = dp.make_model({"python": "my_net.py:MyNet", "kwargs": {"width": 32}}, 10, (1, 8, 8))
    torch.save(trained.state_dict(), tmp_path / "my_net.pt")
    yield tmp_path
    sys.modules.pop("my_net", None)


def run_recipe(text: str, out: Path, data: dict | None = None) -> dp.CompressionReport:
    raw = yaml.safe_load(text)
    if data is not None:  # the CIFAR pack -> a tiny set of the same shape; normalisation as the doc says
        raw["data"] = {**data, **({"normalize": raw["data"]["normalize"]} if "normalize" in raw["data"] else {})}
    for st in raw["stages"]:
        for key in ("epochs", "epochs_per_step"):
            if key in st:
                st[key] = 1
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(out)]) == 0
    return dp.CompressionReport.load(out)


def first(report: dp.CompressionReport, kind: str):
    return next(s for s in report.stages if s.type == kind)


def test_own_class_recipe(workdir):
    report = run_recipe(EXAMPLES["own-class-recipe"], workdir / "run")
    prune = first(report, "prune")  # stages[0] is the input model's row
    assert len(prune.details.removed_blocks) == 1 and prune.details.channels_removed
    assert (workdir / "run" / "model.onnx").exists()
    model, spec, _ = dp.load_checkpoint(
        workdir / "run" / "stages" / "01_prune", trust_code=True
    )  # the class file it carries
    assert spec.source == "python" and model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_own_class_python(workdir):
    exec(compile(EXAMPLES["own-class-python"], "your-model.md", "exec"), {})
    assert (workdir / "my_net_pruned" / "model.json").exists()


def _vision():
    try:
        tv, timm = import_extra("torchvision", "vision"), import_extra("timm", "vision")
        tv.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except (ExtraMissing, RuntimeError) as e:
        pytest.skip(str(e))
    return tv, timm


@pytest.fixture
def tiny_cifar(workdir):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    y = np.arange(96) % 10
    np.savez(workdir / "tiny.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    return {"source": "npz", "path": str(workdir / "tiny.npz"), "batch_size": 32}


@pytest.mark.vision
def test_torchvision_with_trained_weights(workdir, tiny_cifar):
    tv, _ = _vision()
    torch.save(tv.models.resnet18(num_classes=10).state_dict(), workdir / "resnet18_cifar10.pt")
    report = run_recipe(EXAMPLES["torchvision-weights"], workdir / "run", tiny_cifar)
    prune = report.stages[1]
    assert len(prune.details.removed_blocks) == 2 and prune.macs < report.stages[0].macs


@pytest.mark.vision
def test_torchvision_imagenet_weights_with_a_new_head(workdir, tiny_cifar):
    tv, _ = _vision()
    torch.save(tv.models.vgg11_bn(num_classes=1000).state_dict(), workdir / "vgg11_bn_imagenet.pth")
    report = run_recipe(EXAMPLES["torchvision-head"], workdir / "run", tiny_cifar)
    assert report.stages[0].params < 40e6  # the folded classifier: 9.8M, not 128.8M
    assert report.stages[1].macs < report.stages[0].macs


@pytest.mark.vision
def test_timm_model(workdir, tiny_cifar):
    _, timm = _vision()
    from safetensors.torch import save_file

    state = timm.create_model("efficientnet_b0", num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(workdir / "efficientnet_b0_cifar10.safetensors"))
    report = run_recipe(EXAMPLES["timm"], workdir / "run", tiny_cifar)
    assert len(first(report, "prune").details.removed_blocks) == 3
