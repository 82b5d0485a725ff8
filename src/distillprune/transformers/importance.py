"""How much each attention head, FFN neuron and layer matters, measured on calibration batches.

Heads and neurons: a mask m (ones) multiplies each head's output (the input of the attention output
projection) and each FFN neuron (the input of the FFN output projection); the score is the Fisher
information of the mask (Kwon et al., 2022, "A Fast Post-Training Pruning Framework for Transformers"),

    I(m_j) = sum_x E_y~p(y|x) (d log p(y|x) / d m_j)^2

with y drawn from the model itself: a label drawn from the softmax for classifiers, y = f(x) + N(0, I) for
embedders. It is the curvature of the KD loss around the teacher: removing m_j raises the loss by about
I(m_j) / 2. (Michel et al. 2019's first-order KD-loss gradient is zero while the student is still the
teacher.) One random draw per sample, summed over the batch, estimates the per-sample sum without bias.

The criterion is registered as ``fisher`` (``prune.criteria``, family ``encoder``): ``prepare`` runs the
calibration batches once for every layer's masks, ``scores(group)`` reads one layer's heads or neurons
(:class:`EncoderGroup`). Layers are chosen by the block scorer (``prune.depth.BlockScorer``) with the
:func:`kd_distance` of the task (1 - cosine to the teacher for embedders, KL for classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, call, is_embedder
from distillprune.distill.losses.kd import soft_kl
from distillprune.prune.criteria import Criterion, LossFn, register
from distillprune.transformers.hub_code import PARTS, layer_family, linear_at
from distillprune.transformers.surgery import head_dim, layers


def _output_loss(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A log-likelihood whose gradient has zero mean and per-sample independent noise (see module doc)."""
    out = out.float()
    if is_embedder(model):
        return (out * torch.randn_like(out)).sum()
    y = torch.distributions.Categorical(logits=out.detach()).sample()
    return F.cross_entropy(out, y, reduction="sum")


def fisher_scores(
    model: nn.Module, batches: Sequence[Batch], seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: head scores (H_l,) and FFN neuron scores (F_l,)."""
    d = head_dim(model)
    ls = layers(model)
    dev = next(model.parameters()).device
    head_masks, ffn_masks, handles = [], [], []
    for layer in ls:
        paths = PARTS[layer_family(layer)]
        out_proj, ffn_out = linear_at(layer, paths[3]), linear_at(layer, paths[5])
        hm = torch.ones(out_proj.in_features // d, device=dev, requires_grad=True)
        fm = torch.ones(ffn_out.in_features, device=dev, requires_grad=True)
        head_masks.append(hm)
        ffn_masks.append(fm)
        handles.append(out_proj.register_forward_pre_hook(lambda _m, a, hm=hm: (a[0] * hm.repeat_interleave(d),)))
        handles.append(ffn_out.register_forward_pre_hook(lambda _m, a, fm=fm: (a[0] * fm,)))
    sums = [torch.zeros_like(m) for m in head_masks + ffn_masks]
    was = model.training
    model.eval()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for x in batches:
            loss = _output_loss(model, call(model, x))
            grads = torch.autograd.grad(loss, head_masks + ffn_masks, allow_unused=True)
            for s, g in zip(sums, grads, strict=True):
                if g is not None:
                    s += g.detach() ** 2
    finally:
        for h in handles:
            h.remove()
        torch.random.set_rng_state(gen_state)
        model.train(was)
    n = len(ls)
    return sums[:n], sums[n:]


def kd_distance(student: torch.Tensor, teacher: torch.Tensor, embedding: bool) -> float:
    """How far a student's outputs are from the teacher's: 1 - cosine (embedders), KL at T=1 (classifiers)."""
    if embedding:
        return float((1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean())
    return float(soft_kl(student, teacher, 1.0))


@dataclass(frozen=True)
class EncoderGroup:
    """One encoder layer's attention heads (``part="heads"``) or FFN neurons (``part="ffn"``)."""

    layer: int
    part: str


@register
class Fisher(Criterion):
    """Fisher information of head and neuron masks (see the module docstring)."""

    name = "fisher"
    needs_gradients = True
    family = "encoder"

    def __init__(self) -> None:
        self.heads: list[torch.Tensor] = []
        self.ffn: list[torch.Tensor] = []

    def prepare(self, model: nn.Module, batches: Sequence[Any], loss: LossFn | None = None, seed: int = 0) -> None:
        """Sum the squared mask gradients over ``batches`` (labels drawn from the model, seeded by ``seed``)."""
        self.heads, self.ffn = fisher_scores(model, batches, seed)

    def scores(self, group: Any) -> torch.Tensor:
        assert isinstance(group, EncoderGroup)
        return (self.heads if group.part == "heads" else self.ffn)[group.layer]
