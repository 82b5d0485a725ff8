"""The contract of every registry, parametrised over what is registered: a new model, data source,
importance criterion or stage is tested here without new test code (losses and quantizers have their own
contract files). Each method declares how it is exercised (``example`` on the model builder, the stage
config, ``data.examples`` for sources)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import distillprune as dp
from distillprune.core.batch import NamedInputs, call
from distillprune.core.reporting import Details
from distillprune.data.config import DataConfig
from distillprune.data.examples import EXAMPLES
from distillprune.export.onnx import onnx_bytes, parity
from distillprune.measure.metrics import count_macs, count_params
from distillprune.models.registry import MODELS, example_of
from distillprune.prune.criteria import CRITERIA
from distillprune.recipes.registry import STAGES
from distillprune.registries import INTERNAL, REGISTRIES, SOURCES, internal


def _needs(module: str | None) -> None:
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"needs the optional extra that provides '{module}'")


def test_every_registry_is_listed_and_non_empty():
    import importlib
    import pkgutil

    from distillprune.core.registry import Registry

    found = {}
    for info in pkgutil.walk_packages(dp.__path__, "distillprune."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra's module (its registries register through core modules)
            continue
        found.update({id(v): f"{info.name}.{k}" for k, v in vars(module).items() if isinstance(v, Registry)})
    everyone = [*REGISTRIES.values(), *(internal(n) for n in INTERNAL)]
    listed = {id(r) for r in everyone}
    assert set(found) <= listed, [found[i] for i in set(found) - listed]
    assert all(reg.names() for reg in everyone)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODELS.names())
def test_model_builds_runs_exports_and_prunes(name: str):
    ex = example_of(name)
    _needs(ex.requires)
    torch.manual_seed(0)
    model = dp.build_model(name, 10, ex.input_shape, **ex.kwargs).eval()
    x = torch.randn(2, *ex.input_shape)
    logits = model(x)
    assert logits.shape == (2, 10)
    scale = max(1.0, float(logits.abs().max()))  # an untrained ResNet-110's logits reach 1e7
    assert parity(model, onnx_bytes(model, ex.input_shape), x)["max_abs_diff"] < 1e-4 * scale
    before = count_macs(model, ex.input_shape)
    spec = dp.ArchSpec(name, 10, list(ex.input_shape), dict(ex.kwargs))
    dp.prune_(
        model, {"width": {"ratio": 0.5, "round_to": 4}}, dp.Examples(torch.zeros(1, *ex.input_shape), 10), history=spec
    )
    assert count_macs(model, ex.input_shape) < before
    assert model(x).shape == (2, 10)
    rebuilt = spec.build()  # the history replays on a fresh build
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


# ---------------------------------------------------------------- data sources
def test_every_source_has_an_example():
    assert set(SOURCES.names()) <= set(EXAMPLES.names()), "add a data.examples writer for the new source"


@pytest.mark.parametrize("name", SOURCES.names())
def test_source_loads_its_example(name: str, tmp_path: Path):
    ex = EXAMPLES.get(name)
    _needs(ex.requires)
    opts = ex.write(tmp_path)
    bundle = dp.load_data(DataConfig(source=name, **opts))
    assert len(bundle.train) > 0 and len(bundle.test) > 0
    assert bundle.train.x.shape[1:] == bundle.test.x.shape[1:] == bundle.input_shape
    assert bundle.train.y is not None and int(bundle.train.y.max()) < bundle.num_classes
    assert bundle.mean.shape == bundle.std.shape and bool((bundle.std > 0).all())
    x = bundle.inputs("test", 4)  # normalised float32, as ONNX Runtime takes them (text: named int64 inputs)
    if isinstance(x, NamedInputs):
        assert all(v.dtype == np.int64 for v in x.numpy().values()) and len(x) == min(4, len(bundle.test))
        assert "input_ids" in x.names() and "attention_mask" in x.names()
    else:
        assert x.dtype == np.float32 and x.shape[0] == min(4, len(bundle.test))
    limited = dp.load_data(DataConfig(source=name, limit_train=4, limit_test=2, **opts))
    assert (len(limited.train), len(limited.test)) == (4, 2)


# ---------------------------------------------------------------- importance criteria
@pytest.mark.parametrize("name", [n for n, c in CRITERIA.items() if c.family == "cnn"])
def test_importance_criterion_prunes_while_distilling(name: str, digits_bundle):
    data = dp.load_data(DataConfig(source="digits", limit_train=128, limit_test=64))
    torch.manual_seed(0)
    model = dp.build_model("digits_cnn", 10, (1, 8, 8), widths=[8, 16, 16], blocks=[1, 1, 1])
    spec = dp.ArchSpec("digits_cnn", 10, [1, 8, 8], {"widths": [8, 16, 16], "blocks": [1, 1, 1]})
    params = count_params(model)
    report = dp.prune_(model, {"width": {"ratio": 0.5, "round_to": 4, "importance": name}}, data, history=spec)
    assert count_params(model) < params and report.channels_removed
    assert [op.op for op in spec.history] == ["channels"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# ---------------------------------------------------------------- stages
TINY = {
    "name": "contract",
    "seed": 0,
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
    "data": {"source": "digits", "limit_train": 128, "limit_test": 64, "batch_size": 64},
    "runtime": {"progress": False, "tensorboard": False},
    "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 0, "min_window_s": 0.001},
}


def tiny_text(folder: Path) -> dict:
    """A tiny BERT classifier and sentiment texts: the context of stages for Hugging Face encoders."""
    from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment

    model = tiny_bert_folder(folder / "model", layers=2, num_labels=2)
    data = tiny_sentiment(folder / "data", 48, 16)
    return {
        **TINY,
        "model": {"source": "hf", "path": str(model), "task": "sequence-classification"},
        "data": {"source": "text", "path": str(data), "batch_size": 16, "text": {"max_length": 16}},
        "measure": {**TINY["measure"], "seq_lengths": [16]},
    }


@pytest.mark.parametrize("name", STAGES.names())
def test_stage_runs_from_its_example(name: str, tmp_path: Path):
    definition = STAGES.get(name)
    assert definition.summary, f"stage '{name}': its config needs a docstring (the README table reads it)"
    stage = {"type": name, **definition.config.example}
    requires = getattr(definition.config, "requires", None)  # a stage for models of an optional extra
    _needs(requires)
    base = tiny_text(tmp_path / "ctx") if requires == "transformers" else TINY
    recipe = dp.Recipe.model_validate({**base, "stages": [{"type": "train", "epochs": 1}, stage]})
    assert recipe.model_dump(mode="json")["stages"][1]["type"] == name  # the union keeps the stage's own fields
    report = dp.compress(recipe, tmp_path / "run", quiet=True)
    row = report.stages[-1]
    assert row.type == name and row.measured == definition.measured
    assert row.details is None or isinstance(row.details, Details)
    again = dp.CompressionReport.load(tmp_path / "run")  # typed details survive report.json
    assert type(again.stages[-1].details) is type(row.details)
    model, spec, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / f"02_{name}")
    if requires == "transformers":
        assert call(model, model.example_inputs(2, 8)).shape == (2, 2)
    else:
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
