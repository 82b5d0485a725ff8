"""Model statistics: params, MACs (torch's flop counter), ONNX size, measured latency, accuracy."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from distillprune.core.batch import call, example_inputs
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, ort_latency, torch_latency


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    return int(sum(int((p != 0).sum()) if nonzero else p.numel() for p in model.parameters()))


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Out-channels of every Conv and out-features of every Linear layer, by module name (model order).

    Comparing two stages shows what pruning cut: a narrower layer lost channels, a missing one was
    removed with its block (depth pruning replaces the block by an Identity)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample's forward pass (torch's FLOP counter / 2); a text model's sample is
    one sequence of ``input_shape[0]`` tokens. ``F.scaled_dot_product_attention`` runs its math kernel here: the
    counter sees its two matmuls (the fused CPU kernel counts as 0)."""
    m = copy.deepcopy(model).float().cpu().eval()
    x = example_inputs(m, input_shape)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call(m, x)
    return int(counter.get_total_flops() // 2)


@dataclass
class ModelStats:
    params: int
    nonzero_params: int
    macs: int
    onnx_bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # ort_bs1, ort_bs32, gpu_bs256 ...
    accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def measure_model(
    model: nn.Module, input_shape: Sequence[int], latency: LatencyConfig | None = None, accuracy: float | None = None
) -> ModelStats:
    latency = latency or LatencyConfig()
    blob = onnx_bytes(model, input_shape)
    lat: dict[str, float] = {}
    if latency.enabled:
        lat = {f"ort_{k}": v for k, v in ort_latency(blob, input_shape, latency).items()}
        if torch.cuda.is_available():
            for mode in ("eager", "graph"):
                lat[f"gpu_{mode}_bs{latency.gpu_batch_size}"] = torch_latency(
                    copy.deepcopy(model), input_shape, latency.gpu_batch_size, cfg=latency, mode=mode
                )
    return ModelStats(
        count_params(model), count_params(model, nonzero=True), count_macs(model, input_shape), len(blob), lat, accuracy
    )
