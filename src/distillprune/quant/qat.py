"""Quantization-aware training with knowledge distillation, exported to int8 QDQ ONNX.

Fake quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"), simulated the way ONNX Runtime will run the model:

* BatchNorm folded into the preceding convolution with its running statistics (frozen), so the
  weights that get quantized are the folded ones, exactly as in the exported graph;
* weights: int8, symmetric, one scale per output channel (``max|w| / 127``), as ORT's quantizer;
* activations: per-tensor asymmetric, at the input and output of every Conv/Linear; the ranges
  start from calibration, follow an EMA of the batch ranges for ``observer_fraction`` of the
  steps, then freeze. Gradients pass straight through the rounding (STE).

Training distils from the teacher. Afterwards the wrappers come off (the model is the plain
architecture with QAT-trained weights), ORT quantizes it (prepare -> calibrate -> convert) and the
int8 file is checked against the fake-quant PyTorch model, whose activation ranges are
re-observed on the same calibration samples first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distillprune.core.modules import set_module
from distillprune.errors import QuantizationError
from distillprune.quant.base import QUANTIZERS, QuantJob, QuantResult, check_agreement, run_torch
from distillprune.quant.config import QATOptions, QuantConfig
from distillprune.quant.registry import quantizer_for


class ActQuant(nn.Module):
    """Per-tensor asymmetric fake quantization with a min/max observer (calibrate | ema | frozen)."""

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor

    def __init__(self, signed: bool = False, momentum: float = 0.1):
        super().__init__()
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)
        self.momentum = momentum
        self.mode = "calibrate"
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def reset(self) -> None:
        self.lo.zero_()
        self.hi.zero_()
        self.seen.fill_(False)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        elif self.mode == "calibrate":
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        # ORT's rule: the range always includes 0; scale spans it; zero point rounds onto the grid
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(1e-8)
        zp = (self.qmin - lo / scale).round().clamp(self.qmin, self.qmax).to(torch.int32)
        return scale.reshape(1), zp.reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrate" or (self.mode == "ema" and self.training):
            self._observe(x.detach())
        if not bool(self.seen):
            return x
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale.to(x.device), zp.to(x.device), self.qmin, self.qmax)


def fake_quant_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 ([-127, 127]) fake quantization, one scale per output channel or per tensor."""
    if per_channel:
        scale = (w.detach().abs().flatten(1).amax(1) / 127.0).clamp_min(1e-12).float()
        return torch.fake_quantize_per_channel_affine(
            w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -127, 127
        )
    scale = (w.detach().abs().max() / 127.0).clamp_min(1e-12).float().reshape(1)
    return torch.fake_quantize_per_tensor_affine(
        w, scale, torch.zeros(1, dtype=torch.int32, device=w.device), -127, 127
    )


def running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, running_var) of ``bn``: what folding needs, absent with track_running_stats=False."""
    if bn.running_mean is None or bn.running_var is None:
        raise QuantizationError(
            "qat folds each BatchNorm2d into the convolution before it with its running statistics; "
            "got a BatchNorm2d with track_running_stats=False, which has none"
        )
    return bn.running_mean, bn.running_var


class QuantWrapper(nn.Module):
    """A Conv2d (with its BatchNorm folded in) or a Linear, with fake-quant input, weight and output."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | None, per_channel: bool, signed: bool):
        super().__init__()
        self.layer, self.bn, self.per_channel = layer, bn, per_channel
        self.act_in, self.act_out = ActQuant(signed), ActQuant(signed)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            return w, b
        bn = self.bn
        mean, var = running_stats(bn)
        inv = (var + bn.eps).rsqrt()
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
        k = gamma * inv
        b0 = b if b is not None else torch.zeros_like(inv)
        return w * k.view(-1, *([1] * (w.dim() - 1))), beta + (b0 - mean) * k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(x)
        if self.bn is not None and self.training:
            return self.act_out(self._train_bn(x, self.bn))
        w, b = self.folded()
        w = fake_quant_weight(w, self.per_channel)
        y = self.layer._conv_forward(x, w, b) if isinstance(self.layer, nn.Conv2d) else F.linear(x, w, b)
        return self.act_out(y)

    def _train_bn(self, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        """Training with a live BatchNorm (batch statistics, running statistics updated) on the
        convolution of the quantized *folded* weights, the scheme of Jacob et al. / torch.ao's ConvBn2d.

        Folding with frozen statistics from the first step scales each channel's effective learning
        rate by (gamma / running_std)^2; on pruned nets with small running variances that made QAT
        diverge. Here the fold only decides what is quantized; the conv output is un-scaled and
        normalised by the batch, so training keeps BN's conditioning. In eval mode the exact folded
        path (what ONNX Runtime runs) is used.
        """
        layer = self.layer
        assert isinstance(layer, nn.Conv2d)  # a BatchNorm is only folded into a Conv2d (conv_bn_pairs)
        _, var = running_stats(bn)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        factor = gamma * (var + bn.eps).rsqrt()
        shape = (-1, *([1] * (layer.weight.dim() - 1)))
        w = fake_quant_weight(layer.weight * factor.view(shape), self.per_channel)
        safe = torch.where(factor.abs() < 1e-12, torch.ones_like(factor), factor)  # gamma = 0: weights are 0
        y = layer._conv_forward(x, w, None) / safe.view(1, -1, 1, 1)
        if layer.bias is not None:
            y = y + layer.bias.view(1, -1, 1, 1)
        return bn(y)


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """{conv name: bn name} for every BatchNorm2d that directly and only follows a Conv2d (torch.fx)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types on untraceable control flow
        raise QuantizationError(
            f"qat folds BatchNorm into convolutions by tracing the model with torch.fx, "
            f"which fails on {type(model).__name__}: {str(e).splitlines()[0]}"
        ) from None
    mods = dict(model.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.BatchNorm2d):
            src = node.args[0]
            if (
                isinstance(src, torch.fx.Node)
                and src.op == "call_module"
                and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1
            ):
                pairs[str(src.target)] = str(node.target)
    return pairs


class FakeQuant:
    """Wraps a model in place (``wrap``) and restores its own modules (``unwrap``)."""

    def __init__(self, model: nn.Module, per_channel: bool = True, signed: bool = False):
        self.model, self.per_channel, self.signed = model, per_channel, signed
        self.wrapped: dict[str, tuple[nn.Module, str | None, nn.Module | None]] = {}

    def wrap(self) -> int:
        pairs = conv_bn_pairs(self.model)
        mods = dict(self.model.named_modules())
        bns = {conv: cast(nn.BatchNorm2d, mods[bn]) for conv, bn in pairs.items()}  # conv_bn_pairs checked
        for paired in bns.values():
            running_stats(paired)  # before anything is wrapped: a bad BatchNorm leaves the model as it was
        for name, m in list(mods.items()):
            if isinstance(m, (nn.Conv2d, nn.Linear)) and type(m) in (nn.Conv2d, nn.Linear):
                bn_name = pairs.get(name)
                bn = bns.get(name)
                self.wrapped[name] = (m, bn_name, bn)
                set_module(self.model, name, QuantWrapper(m, bn, self.per_channel, self.signed))
                if bn_name:
                    set_module(self.model, bn_name, nn.Identity())
        if not self.wrapped:
            raise QuantizationError(f"qat: {type(self.model).__name__} has no Conv2d or Linear layer to quantize")
        return len(self.wrapped)

    def unwrap(self) -> None:
        for name, (layer, bn_name, bn) in self.wrapped.items():
            set_module(self.model, name, layer)
            if bn_name and bn is not None:  # wrap() stores both or neither
                set_module(self.model, bn_name, bn)
        self.wrapped = {}

    def observers(self) -> list[ActQuant]:
        return [m for m in self.model.modules() if isinstance(m, ActQuant)]

    def set_mode(self, mode: str) -> None:
        for o in self.observers():
            o.mode = mode

    @torch.no_grad()
    def calibrate(self, batches: Iterable[np.ndarray]) -> None:
        """Global min/max of each observed tensor over ``batches`` (ORT's MinMax rule)."""
        was = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        for o in self.observers():
            o.reset()
        self.set_mode("calibrate")
        for x in batches:
            self.model(torch.from_numpy(np.asarray(x)).to(device))
        self.set_mode("frozen")
        self.model.train(was)


@QUANTIZERS.register("qat")
class QATConfig(QuantConfig):
    """Quantization-aware training with KD (``qat``: epochs, optimizer, distill), exported to int8 QDQ."""

    method: Literal["qat"] = "qat"
    qat: QATOptions = Field(default_factory=QATOptions, description="epochs, optimizer, distill")


@quantizer_for(QATConfig)
def qat(job: QuantJob) -> QuantResult:
    from distillprune.quant.ort_static import static_int8

    if job.train is None or job.qat is None:
        raise QuantizationError(
            "qat trains the model: it needs training data and qat options "
            "(a quantize stage with method: qat and a qat: {epochs: ...} block)"
        )
    if job.cfg.weight_type != "int8":
        raise QuantizationError(f"qat simulates int8 weights; got weight_type={job.cfg.weight_type!r}")
    fq = FakeQuant(job.model, job.cfg.per_channel, job.cfg.activation_type == "int8")
    layers = fq.wrap()
    try:
        fq.calibrate(job.calibration())
        fq.set_mode("ema")
        freeze_at = int(job.qat.observer_fraction * job.train_steps)
        if freeze_at <= 0:
            fq.set_mode("frozen")
        steps = [0]

        def on_step(_model: nn.Module) -> None:
            steps[0] += 1
            if steps[0] == freeze_at:
                fq.set_mode("frozen")

        history = job.train(job.model, on_step)
        fq.calibrate(job.calibration())  # the ranges the exported file will use
        ref = run_torch(job.model, job.test_x)
    finally:
        fq.unwrap()
    res = static_int8(job, job.model, reference=ref, reference_name="QAT model (PyTorch fake-quant)")
    res.method = "qat"
    last = history[-1] if history else {}
    res.details.update(
        {
            "qat_layers": layers,
            "qat_epochs": len(history),
            "qat_final_loss": round(float(last.get("loss", float("nan"))), 4),
        }
    )
    check_agreement(
        res,
        job.cfg,
        "the exported graph quantizes tensors the fake-quant model does not; lower min_agreement or report this model",
    )
    return res
