"""How much each attention head, FFN neuron and layer matters, measured on calibration batches.

Heads and neurons: a mask m (ones) multiplies each head's output (the input of the attention output
projection) and each FFN neuron (the input of the FFN output projection); the score is the Fisher
information of the mask (Kwon et al., 2022, "A Fast Post-Training Pruning Framework for Transformers"),

    I(m_j) = sum_x E_y~p(y|x) (d log p(y|x) / d m_j)^2

with y drawn from the model itself: a label drawn from the softmax for classifiers, y = f(x) + N(0, I) for
embedders. It is the curvature of the KD loss around the teacher: removing m_j raises the loss by about
I(m_j) / 2. (Michel et al. 2019's first-order KD-loss gradient is zero while the student is still the
teacher.) One random draw per sample, summed over the batch, estimates the per-sample sum without bias.

Layers: greedily, the layer whose skipping raises the KD loss least (1 - cosine to the teacher for
embedders, KL for classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, call, is_embedder
from distillprune.distill.losses.kd import soft_kl
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


class _Skip(nn.Module):
    """A layer that passes its hidden states through (the layer, removed)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return hidden_states


def kd_distance(student: torch.Tensor, teacher: torch.Tensor, embedding: bool) -> float:
    if embedding:
        return float((1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean())
    return float(soft_kl(student, teacher, 1.0))


@torch.no_grad()
def choose_layers(model: nn.Module, teacher: nn.Module, batches: Sequence[Batch], count: int) -> list[int]:
    """Greedily pick ``count`` layers whose skipping raises the KD loss least; returns their indices (in the
    model as it is; nothing is removed)."""
    ls = layers(model)
    embedding = is_embedder(model)
    was = model.training
    model.eval()
    targets = [call(teacher, x) for x in batches]
    chosen: list[int] = []
    try:
        for _ in range(count):
            scores = {}
            for i in range(len(ls)):
                if i in chosen:
                    continue
                saved = [(j, ls[j]) for j in chosen + [i]]
                for j, _m in saved:
                    ls[j] = _Skip()
                scores[i] = sum(
                    kd_distance(call(model, x), t, embedding) for x, t in zip(batches, targets, strict=True)
                ) / len(batches)
                for j, m in saved:
                    ls[j] = m
            chosen.append(min(scores, key=scores.__getitem__))
    finally:
        model.train(was)
    return sorted(chosen)
