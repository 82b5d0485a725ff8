"""Lists in prose come from the registries: every list of losses, criteria, sources, quantizers and model
sources that a field description, a stage's docstring (its README row) or an error message spells out
names exactly what is registered, so adding a method cannot leave a stale list behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import distillprune as dp
from distillprune.data.config import DataConfig
from distillprune.distill.distiller import check_terms, label_free_losses
from distillprune.distill.losses.base import LOSSES
from distillprune.distill.schedule import build_term
from distillprune.errors import DataError
from distillprune.models.config import ModelConfig
from distillprune.models.registry import MODEL_SOURCES
from distillprune.pipeline.stages.distill import DistillStage
from distillprune.pipeline.stages.prune import PruneStage
from distillprune.pipeline.stages.train import TrainStage
from distillprune.prune.config import WidthConfig
from distillprune.prune.criteria import CRITERIA
from distillprune.quant.config import QuantConfig
from distillprune.quant.registry import QUANTIZERS
from distillprune.registries import SOURCES
from distillprune.ssl import SSL_METHODS, SSLConfig

pytest.importorskip("distillprune.transformers")  # registers the hf source

README = (Path(dp.__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def _alternatives(description: str | None) -> set[str]:
    """The names of a ``a | b (note) | c`` description."""
    return {part.strip().split()[0] for part in (description or "").split("|")}


@pytest.mark.parametrize(
    ("field", "registry"),
    [
        (DataConfig.model_fields["source"], SOURCES),
        (QuantConfig.model_fields["method"], QUANTIZERS),
        (ModelConfig.model_fields["source"], MODEL_SOURCES),
        (SSLConfig.model_fields["method"], SSL_METHODS),
    ],
    ids=["data.source", "quantize.method", "model.source", "ssl.method"],
)
def test_a_field_listing_a_registry_lists_all_of_it(field, registry):
    assert _alternatives(field.description) == set(registry.names())


def test_each_family_s_importance_field_lists_its_criteria():
    from distillprune.transformers.config import TransformerPruneConfig

    for field, family in (
        (WidthConfig.model_fields["importance"], "cnn"),
        (TransformerPruneConfig.model_fields["importance"], "encoder"),
    ):
        names = {n for n, c in CRITERIA.items() if c.family == family}
        assert names and {p.split(":")[0] for p in _alternatives(field.description)} == names


def _ticked(text: str) -> set[str]:
    return set(re.findall(r"`(\w+)`", text))


def test_the_distill_stage_and_its_readme_row_name_every_loss():
    doc = DistillStage.__doc__ or ""
    assert set(LOSSES.names()) <= _ticked(doc), set(LOSSES.names()) - _ticked(doc)
    row = next(line for line in README.splitlines() if line.startswith("| `distill` |"))
    assert set(LOSSES.names()) <= _ticked(row)


def test_the_train_stage_and_its_readme_row_name_every_ssl_method():
    assert set(SSL_METHODS.names()) <= _ticked(TrainStage.__doc__ or "")
    row = next(line for line in README.splitlines() if line.startswith("| `train` |"))
    assert set(SSL_METHODS.names()) <= _ticked(row)


def test_the_prune_stage_names_every_importance_criterion():
    cnn = {n for n, c in CRITERIA.items() if c.family == "cnn"}
    assert cnn <= _ticked(PruneStage.__doc__ or "")


def test_the_label_free_message_names_every_loss_that_learns_from_the_teacher_alone():
    eligible = {n for n, cls in LOSSES.items() if cls.reads_teacher and not cls.needs_labels}
    assert set(label_free_losses()) == eligible and {"embedding", "hidden", "minilm"} <= eligible
    needs = [n for n, cls in LOSSES.items() if cls.needs_labels]
    terms = [build_term({"name": needs[0]})]
    with pytest.raises(DataError) as err:
        check_terms(terms, has_labels=False)
    listed = set(str(err.value).split("works with ")[1].split(", "))
    assert listed == eligible
