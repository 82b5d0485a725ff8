"""Recovery of an encoder after head / FFN cuts: least-squares re-fit of the projections that lost inputs.

Removing attention heads removes columns of the attention output projection (``attention.output.dense`` /
``out_lin``); removing FFN neurons removes columns of the FFN down-projection (``output.dense`` /
``ffn.lin2``). The remaining columns were trained to work *with* the removed ones, so their sum is now
biased. As in the mask tuning of Kwon et al. (NeurIPS 2022, "A Fast Post-Training Pruning Framework for
Transformers"), the layer is corrected without training: on calibration tokens, the projection's weight and
bias are re-solved so that its output matches the dense model's output at the same place,

    [W | b]* = argmin ||[X 1] [W | b]^T - Y||^2 + lam ||W||^2

where ``X`` are the *pruned* model's inputs of the projection (so an error corrected upstream is not
corrected twice) and ``Y`` the dense teacher's outputs (real tokens only, padding left out). In a BERT layer
the projection's output ``y`` is added to the residual stream ``r`` before a LayerNorm, so the target is the
dense sum less the pruned model's own residual, ``Y = y_dense + r_dense - r``: the LayerNorm then sees the
dense input, which also makes up for what the residual stream lost upstream (a dropped layer). Layers go in
order, the attention projection before the FFN one in each layer, each solved from a fresh forward pass
through the layers already re-fitted. A solve that would not lower the calibration error leaves the
weights as they were, so recovery never makes the calibration error worse; the report says, per projection,
what was re-fitted or skipped and why. The normal equations and the ridge are ``prune.recovery``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.core.progress import expect, phase, tick
from distillprune.distill.losses.base import sequence_mask
from distillprune.prune.recovery import Gram, RecoveryConfig
from distillprune.transformers.hub_code import PARTS, layer_family
from distillprune.transformers.surgery import layers

#: (index in ``hub_code.PARTS``, the name in reports) of the projections a cut leaves short of inputs
PROJECTIONS = ((3, "attention_output"), (5, "ffn_output"))


@dataclass
class Refit:
    """One projection: re-fitted or skipped, with the calibration error (mean squared, per token) before and
    after."""

    layer: int
    part: str
    status: str  # "refit" | "kept" (the solve was no better) | "skipped"
    reason: str = ""
    error_before: float | None = None
    error_after: float | None = None


@dataclass
class EncoderRecoveryReport:
    """What one recovery pass did to each projection (``tokens``: calibration tokens per solve)."""

    tokens: int = 0
    refits: list[Refit] = field(default_factory=list)


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not computed."""


def _run(model: nn.Module, x: Batch, proj: nn.Linear, want: str, adder: nn.Module | None) -> list[torch.Tensor]:
    """``[proj's input or output]`` on batch ``x``, plus the residual ``adder`` adds to that output before its
    LayerNorm (its second argument) when ``adder`` is given; the forward stops at ``proj``."""
    store: list[torch.Tensor] = []

    def residual(_m: nn.Module, args: tuple) -> None:
        store.append(args[1].detach())

    def hook(_m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        store.insert(0, (inp[0] if want == "input" else out).detach())
        raise _Stop

    handles = [proj.register_forward_hook(hook)]
    if adder is not None:
        handles.append(adder.register_forward_pre_hook(residual))
    try:
        call(model, x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return store


def _rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) -> the (N, D) rows of real tokens."""
    if mask is None:
        return t.reshape(-1, t.shape[-1])
    return t[mask.to(torch.bool)]


def _projection(layer: nn.Module, i: int) -> nn.Linear:
    m = layer.get_submodule(PARTS[layer_family(layer)][i])
    assert isinstance(m, nn.Linear)  # hub_code checked the family's parts
    return m


def _adder(layer: nn.Module, i: int) -> nn.Module | None:
    """The module that adds projection ``i``'s output to the residual stream (BERT's ``attention.output`` /
    ``output``: ``LayerNorm(dense(h) + residual)``, the residual its second argument); None where the sum
    happens inside the layer's own forward (DistilBERT)."""
    if layer_family(layer) != "bert":
        return None
    return layer.get_submodule(PARTS["bert"][i].rpartition(".")[0])


@torch.no_grad()
def _refit(
    student: nn.Module,
    teacher: nn.Module,
    s_layer: nn.Module,
    t_layer: nn.Module,
    i: int,
    batches: Sequence[Batch],
    damp: float,
) -> tuple[float, float, int]:
    """Solve projection ``i`` of ``s_layer`` in place; returns (error before, error after, tokens)."""
    s_proj, t_proj = _projection(s_layer, i), _projection(t_layer, i)
    s_add, t_add = _adder(s_layer, i), _adder(t_layer, i)
    bias = s_proj.bias
    gram = Gram(s_proj.in_features, s_proj.out_features, bias=bias is not None)
    for x in batches:
        mask = sequence_mask(x)
        xs, *rs = _run(student, x, s_proj, "input", s_add)
        yt, *rt = _run(teacher, x, t_proj, "output", t_add)
        if rs and rt:  # match the dense sum y + r that the LayerNorm sees, not y alone
            yt = yt + rt[0] - rs[0]
        gram.add(_rows(xs, mask).cpu(), _rows(yt, mask).cpu())
    rows = [s_proj.weight.T] + ([] if bias is None else [bias.view(1, -1)])
    before = gram.residual(torch.cat(rows).double().cpu())
    w = gram.solve(damp)
    after = gram.residual(w)
    if not (after < before and torch.isfinite(w).all()):
        return before, before, gram.rows
    n = s_proj.in_features
    s_proj.weight.copy_(w[:n].T.to(s_proj.weight))
    if bias is not None:
        bias.copy_(w[n].to(bias))
    return before, after, gram.rows


def _sig(x: float) -> float:
    return float(f"{x:.6g}")  # six significant digits: errors span many orders of magnitude


def _origin(t_layers: nn.ModuleList, layer: nn.Module, index: int) -> nn.Module | None:
    """The teacher layer a student layer was cut from: the one with its ``dp_origin`` (set when layers were
    dropped, and copied into a teacher snapshot taken after), else the one at the same place."""
    origin = getattr(layer, "dp_origin", None)
    if origin is None:
        return t_layers[index] if index < len(t_layers) else None
    for ti, t in enumerate(t_layers):
        if getattr(t, "dp_origin", ti) == origin:
            return t
    return None


@phase("recovery", unit="layers")
def recover_encoder(
    student: nn.Module, teacher: nn.Module, batches: Sequence[Batch], cfg: RecoveryConfig
) -> EncoderRecoveryReport:
    """Re-fit, layer by layer, the projections of ``student`` whose inputs a cut removed (see the module doc),
    with ``cfg.damp`` (default here: 1e-4).

    ``teacher`` is the dense model the student was cut from; a student layer is matched with the teacher
    layer it came from (``dp_origin`` after layer drops)."""
    report = EncoderRecoveryReport()
    if cfg.method == "none" or not batches:
        return report
    damp = 1e-4 if cfg.damp is None else cfg.damp
    was = student.training
    student.eval()
    t_layers = layers(teacher)
    expect(len(layers(student)))
    try:
        for li, layer in enumerate(layers(student)):
            tick()
            t_layer = _origin(t_layers, layer, li)
            if t_layer is None:
                report.refits += [
                    Refit(li, name, "skipped", "no teacher layer it came from") for _, name in PROJECTIONS
                ]
                continue
            for i, name in PROJECTIONS:
                s_proj, t_proj = _projection(layer, i), _projection(t_layer, i)
                if s_proj.in_features >= t_proj.in_features:
                    report.refits.append(Refit(li, name, "skipped", "no input was cut"))
                    continue
                if s_proj.out_features != t_proj.out_features:
                    report.refits.append(Refit(li, name, "skipped", "its output width differs from the teacher's"))
                    continue
                before, after, rows = _refit(student, teacher, layer, t_layer, i, batches, damp)
                report.tokens = rows
                status = "refit" if after < before else "kept"
                reason = "" if status == "refit" else "the solve did not lower the calibration error"
                report.refits.append(Refit(li, name, status, reason, _sig(before), _sig(after)))
    finally:
        student.train(was)
    return report
