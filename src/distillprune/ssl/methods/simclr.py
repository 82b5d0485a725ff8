"""SimCLR (Chen, Kornblith, Norouzi & Hinton, 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): two views of every image, a projection head ``g``, and the NT-Xent loss over the batch:

    z = normalize(g(f(v)))  for the 2N views v of N images
    l(i, j) = -log( exp(z_i . z_j / t) / sum_{k != i} exp(z_i . z_k / t) )
    L = 1 / 2N * sum over the N positive pairs (i, j) of [ l(i, j) + l(j, i) ]

Each view's positive is the other view of its image; the other 2N - 2 views of the batch are its
negatives, so SimCLR wants large batches (256+). ``temperature`` 0.2 (solo-learn's CIFAR setting; the paper
uses 0.5 at batch 512 on CIFAR-10). The head (``hidden``, ``out``: 2-layer MLP with BatchNorm) lives in the
objective and is dropped from the exported model: the representation is the backbone's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.data.views import Views
from distillprune.ssl.base import SSL_METHODS, SSLMethod, head_input, mlp, views_of


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of the paired projections ``z1[i]``, ``z2[i]`` (normalised here), mean over 2N views."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own negative
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)


@SSL_METHODS.register("simclr")
class SimCLR(SSLMethod):
    def __init__(self, temperature: float = 0.2, hidden: int = 512, out: int = 128):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"simclr.temperature must be > 0, got {temperature}")
        if hidden < 1 or out < 1:
            raise ValueError(f"simclr: hidden and out must be >= 1, got {hidden}, {out}")
        self.temperature, self.hidden, self.out = float(temperature), int(hidden), int(out)
        self.head: nn.Module | None = None

    def setup(self, model: nn.Module, probe: Batch, embedding: torch.Tensor) -> None:
        width = embedding.flatten(1).shape[1]
        if head_input(self.head) != width:
            self.head = mlp([width, self.hidden, self.out]).to(embedding.device)

    def forward(self, model: nn.Module, x: Views | Batch) -> tuple[torch.Tensor, torch.Tensor]:
        views = views_of(x, "simclr")
        assert self.head is not None  # setup() ran (the objective's attach)
        h = call(model, views.both()).flatten(1)  # one forward: both views share the BatchNorm statistics
        z1, z2 = self.head(h).chunk(2)
        return nt_xent(z1, z2, self.temperature), h[: len(views)]
