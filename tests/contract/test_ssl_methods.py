"""The contract every registered self-supervised method keeps, parametrised over ``SSL_METHODS.names()``: a
new method is tested here without new test code. One training step on a tiny embedding model of the
inputs the method declares (images: two views; text: a tiny BERT): the loss is finite, gradients reach the
backbone and the method's own heads, the heads are not the model's, and the model keeps its parameters."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch

import distillprune as dp
from distillprune.data.base import Split
from distillprune.data.views import ViewLoader
from distillprune.ssl import SSL_METHODS, SSLConfig, SSLObjective

NAMES = SSL_METHODS.names()


def _images():
    torch.manual_seed(0)
    model, _ = dp.make_model(
        {"name": "digits_cnn", "task": "embedding", "kwargs": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}},
        10,
        (1, 8, 8),
    )
    x = (torch.rand(16, 1, 8, 8) * 255).to(torch.uint8)
    loader = ViewLoader(
        Split(x, None),
        8,
        torch.full((1,), 0.5),
        torch.full((1,), 0.25),
        shuffle=True,
        views=SSLConfig(method="simclr").views_config(),
    )
    batch, _ = next(iter(loader))
    return model, loader.prepare(x[:4]), batch, {}


def _text(tmp_path):
    pytest.importorskip("transformers")
    from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment

    folder = tiny_bert_folder(tmp_path / "bert", layers=2)
    data = dp.load_data(
        dp.DataConfig(
            source="text",
            path=str(tiny_sentiment(tmp_path / "data", 16, 8)),
            labels=False,
            text={"tokenizer": str(folder), "max_length": 12},
        )
    )
    model, _ = dp.make_model({"source": "hf", "path": str(folder), "task": "embedding"}, 0, (12,))
    return model, data.train.x[:4], data.train.x[:8], {"tokenizer": str(folder)}


@pytest.mark.parametrize("name", NAMES)
def test_declares_its_contract_and_cites_its_paper(name):
    cls = SSL_METHODS.get(name)
    assert isinstance(cls.two_views, bool) and cls.inputs in ("images", "text")
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert re.search(r"(19|20)\d\d", doc), f"{name}: the module docstring cites no paper"
    assert "=" in doc, f"{name}: the module docstring gives no formula"


@pytest.mark.parametrize("name", NAMES)
def test_one_step_trains_the_backbone_and_the_heads_only(name, tmp_path):
    cls = SSL_METHODS.get(name)
    model, probe, batch, defaults = _images() if cls.inputs == "images" else _text(tmp_path)
    keys = set(model.state_dict())
    objective = SSLObjective(SSLConfig(method=name, **cls.example), **defaults)
    assert (objective.views is not None) == cls.two_views
    objective.attach(model, probe)
    model.train()
    loss, out = objective(model, batch, None)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and float(loss.detach()) >= 0
    assert out.shape[0] == len(batch)
    loss.backward()
    heads = list(objective.trainable())
    assert heads, f"{name}: no head to train"
    assert {id(p) for p in heads}.isdisjoint(id(p) for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads), name
    assert set(model.state_dict()) == keys  # nothing of the method moved into the model
