"""Bugs the type checker (``mypy src``, part of ``make lint``) found: each was a traceback or a wrong number
before, and is one clear error or the right value now."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillprune.core.batch import NamedInputs
from distillprune.core.reporting import details_from_dict
from distillprune.data.base import Examples
from distillprune.errors import CompressionError, DistillpruneError, QuantizationError


def test_qat_refuses_a_batchnorm_without_running_statistics_before_wrapping():
    from distillprune.quant.qat import FakeQuant

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    before = [type(m) for m in model.modules()]
    with pytest.raises(QuantizationError, match="track_running_stats=False"):
        FakeQuant(model).wrap()  # was: a TypeError (None + float) in the first forward pass
    assert [type(m) for m in model.modules()] == before  # nothing was wrapped


def test_prune_without_data_needs_num_classes():
    from distillprune.prune.config import PruneConfig
    from distillprune.prune.session import PruneSession

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    with pytest.raises(DistillpruneError, match="num_classes"):  # was: AttributeError on None.num_classes
        PruneSession(model, PruneConfig(width={"ratio": 0.5}), Examples(torch.zeros(1, 1, 8, 8)))


@pytest.mark.parametrize(("padding", "same_as"), [("same", 1), ("valid", 0)])
def test_latency_table_reads_string_padding(padding, same_as):
    from distillprune.prune.latency_table import layer_shapes

    def shape_of(p):
        return layer_shapes(nn.Sequential(nn.Conv2d(3, 4, 3, padding=p)), (3, 8, 8))["0"]

    s = shape_of(padding)  # was: padding ('s', 'a', 'm', 'e') and a TypeError in macs()
    assert s.padding == (same_as, same_as)
    assert s.macs() == shape_of(same_as).macs() == 4 * 3 * 9 * (8 - 2 + 2 * same_as) ** 2


def test_lowrank_replay_on_a_layer_without_weights_is_a_clear_error():
    from distillprune.lowrank.svd import LowRankOp

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(CompressionError, match="cannot factorize a ReLU"):  # was: AttributeError 'weight'
        LowRankOp("1", 2).replay(model, (4,))


class _NamedNet(nn.Module):
    """A traceable model with named inputs (no BatchNorm)."""

    input_names = ["input_ids", "attention_mask"]

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        return self.out(self.emb(input_ids).mean(1))


def test_fast_teacher_uses_a_teacher_with_named_inputs_as_it_is():
    from distillprune.distill.fast_teacher import fast_teacher

    teacher = _NamedNet().eval()
    probe = NamedInputs(
        {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    )
    run, root, speed = fast_teacher(teacher, [], probe)  # was: a TypeError calling the folded copy
    assert run is teacher and root is teacher and "named inputs" in speed.note


def test_a_report_kind_that_is_not_a_name_loads_as_plain_data():
    d = {"kind": ["prune"], "steps": 1}
    assert details_from_dict(d) is d  # was: TypeError (unhashable list) from the registry lookup
