"""What the planner prices: every call of every Conv/Linear, with the work it really does."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from distillprune.measure.latency import LatencyConfig
from distillprune.prune.latency_table import LatencyTable, LayerShape, layer_of, layer_shapes


def test_a_depthwise_conv_resized_on_one_side_stays_depthwise_and_runs_in_onnx_runtime():
    dw = LayerShape("conv", 96, 96, (3, 3), padding=(1, 1), groups=96, hw=(8, 8))
    for shape in (dw.resized(96, 92), dw.resized(92, 96), dw.resized(92, 92)):
        assert shape.cin == shape.cout == shape.groups == 92
    assert dw.resized(96, 92).macs() == 92 * 9 * 64
    grouped = LayerShape("conv", 32, 32, (3, 3), groups=4, hw=(8, 8))
    assert grouped.resized(24, 16).groups == 4  # a grouped conv keeps its groups
    table = LatencyTable(LatencyConfig(enabled=True, threads=1), 1)
    assert np.isfinite(table.ms(dw.resized(96, 92)))  # ORT refused 'M: 92 group: 96' before


def test_a_linear_over_tokens_costs_once_per_token_and_a_shared_conv_once_per_call():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 8)

        def forward(self, x):
            x = self.conv(self.conv(x))
            return self.fc(x.flatten(2).transpose(1, 2))  # (N, 36 tokens, 4)

    shapes = layer_shapes(Net(), (4, 6, 6))
    assert set(shapes) == {"conv", "conv@2", "fc"} and {layer_of(k) for k in shapes} == {"conv", "fc"}
    assert shapes["fc"].macs() == 36 * 4 * 8
    assert shapes["conv@2"] == shapes["conv"]


@pytest.mark.parametrize("rows", [1, 17])
def test_a_linear_entry_is_timed_at_its_rows(rows):
    table = LatencyTable(LatencyConfig(enabled=True, threads=1), 2)
    assert table.ms(LayerShape("linear", 8, 8, hw=(rows, 1))) > 0
