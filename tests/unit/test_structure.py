"""One session, pluggable structures: the registry by config type, dicts routed to their family, and a
family's target holding only the options its planner reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import distillprune as dp
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.prune.cnn import CnnStructure
from distillprune.prune.config import PruneConfig
from distillprune.prune.structure import STRUCTURES, Structure, config_of, structure_for_config, structure_type
from distillprune.train.config import TrainingOptions

transformers_cfg = pytest.importorskip("distillprune.transformers.config")


def test_a_stage_config_finds_its_family_structure_through_its_bases():
    from distillprune.pipeline.stages.prune import PruneStage
    from distillprune.pipeline.stages.prune_transformer import PruneTransformerStage
    from distillprune.transformers.structure import EncoderStructure

    assert structure_type(PruneStage(type="prune", width={"ratio": 0.5})) is CnnStructure
    stage = PruneTransformerStage(type="prune_transformer", heads={"ratio": 0.5})
    assert structure_type(stage) is EncoderStructure
    with pytest.raises(DistillpruneError, match="no structure prunes a TrainingOptions"):
        structure_type(TrainingOptions())


def test_a_second_structure_for_one_config_is_refused():
    class Other(Structure):
        pass

    with pytest.raises(ValueError, match="'PruneConfig' is already registered by .*CnnStructure"):
        structure_for_config(PruneConfig)(Other)
    assert STRUCTURES.get("PruneConfig") is CnnStructure and CnnStructure.config is PruneConfig


def test_dicts_go_to_the_first_family_holding_all_their_keys():
    TransformerPruneConfig = transformers_cfg.TransformerPruneConfig
    assert type(config_of({"width": {"ratio": 0.5}}, PruneConfig)) is PruneConfig
    assert type(config_of({"heads": {"ratio": 0.5}, "steps": 2}, PruneConfig)) is TransformerPruneConfig
    with pytest.raises(RecipeError, match="prune config: prune needs at least one of width"):
        config_of({"target": {"macs_ratio": 2.0}}, PruneConfig)  # shared keys: the CNN's, as before
    with pytest.raises(RecipeError, match="widht"):  # fits no family: the default's nearest-key error
        config_of({"widht": {"ratio": 0.5}}, PruneConfig)


def test_the_encoder_target_has_no_silent_cnn_planner_keys():
    T = transformers_cfg.TransformerTargetConfig
    # the band (tolerance) is the shared search's rule, so every family's target has it
    fields = {"macs_ratio", "latency_speedup", "batch_size", "depth_fractions", "tolerance", "max_width_ratio"}
    assert set(T.model_fields) == fields
    for key in ("refits", "val_samples", "calib_samples"):
        with pytest.raises(ValueError, match=f"unknown key '{key}'"):
            T.model_validate({"macs_ratio": 2.0, key: 1})
    with pytest.raises(ValueError, match="exactly one of macs_ratio, latency_speedup"):
        T.model_validate({})


def test_the_session_refuses_an_encoder_config_for_a_cnn_in_one_line():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    cfg = transformers_cfg.TransformerPruneConfig(heads={"ratio": 0.5})
    with pytest.raises(DistillpruneError, match="pass data"):
        dp.PruneSession(model, cfg, dp.Examples(torch.zeros(1, 1, 8, 8), 3))
