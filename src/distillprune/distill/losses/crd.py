"""Contrastive representation distillation (Tian, Krishnan & Isola, 2020, "Contrastive Representation
Distillation", ICLR), with a queue of negatives instead of CRD's index-based memory bank.

Embedding heads map the student's and the teacher's features (a tapped feature flattened, e.g.
the penultimate pooled features, or the logits when no ``tap`` is given) to a shared unit sphere:
v_i = g_s(s_i) / ||g_s(s_i)||, u_i = g_t(t_i) / ||g_t(t_i)|| (g_s, g_t linear, built in ``setup``).
Sample i's positive is the other network's embedding of the same input; the negatives are the other
samples of the batch plus the N most recent embeddings of the other network (queues U and V):

    L_s = -mean_i log( exp(v_i.u_i / tau) / ( sum_j exp(v_i.u_j / tau) + sum_{q in U} exp(v_i.q / tau) ) )
    L_t = the same with the roles of u and v swapped (anchors u_i, negatives from V)
    L   = L_s + L_t                                                      (tau = 0.07, d = 128 as in the paper)

This is the softmax (InfoNCE) form of CRD's critic, with both directions as in the authors' code.

Why a queue (MoCo-style, He et al. 2020) rather than CRD's memory bank: the bank is indexed by
dataset sample indices, which a loss that sees only (student, teacher, targets) does not have, and
which shuffling, subsets and caching would all have to keep in step. The queue holds detached
embeddings of the last N samples (a FIFO, updated after each training step, not in eval or under
no_grad), so it needs no indices; its entries lag the heads by at most N / batch steps. The queues
are buffers: they are saved in training checkpoints and survive resume. Gradients reach the
student and both heads, never the teacher network (its features are detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, embedding_pair, parse_tap


@LOSSES.register("crd")
class CRDLoss(DistillLoss):
    width_free = True
    schedulable = ("temperature",)
    queue_s: torch.Tensor  # buffers, registered by setup
    queue_t: torch.Tensor
    queue_len: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        tap: str | list[str] | None = None,
        dim: int = 128,
        queue_size: int = 4096,
        temperature: float = 0.07,
    ):
        super().__init__()
        if dim < 1 or queue_size < 0:
            raise ValueError(f"crd.dim must be >= 1 and crd.queue_size >= 0, got {dim} and {queue_size}")
        if temperature <= 0:
            raise ValueError(f"crd.temperature must be > 0, got {temperature}")
        self.taps = parse_tap(tap, "crd")
        self.dim, self.queue_size, self.temperature = dim, queue_size, temperature
        self.head_s: nn.Module = nn.Identity()
        self.head_t: nn.Module = nn.Identity()
        # host-side copies of queue_len / queue_ptr, so a step never waits on the GPU to read them;
        # None: read the buffers once (after setup, or after a checkpoint was loaded into them)
        self._fill: tuple[int, int] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_fill", None))

    def _embeddings(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        return embedding_pair(self.taps, student, teacher)

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        es, et = self._embeddings(student, teacher)
        device = student.logits.device
        self.head_s = nn.Linear(es.shape[1], self.dim).to(device)
        self.head_t = nn.Linear(et.shape[1], self.dim).to(device)
        n = self.queue_size
        self.register_buffer("queue_s", torch.zeros(n, self.dim, device=device))
        self.register_buffer("queue_t", torch.zeros(n, self.dim, device=device))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=device))
        self._fill = (0, 0)

    def _nce(self, anchor: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        logits = anchor @ positive.t()  # (B, B): the diagonal holds the positives
        if len(queue):
            logits = torch.cat([logits, anchor @ queue.t()], dim=1)
        target = torch.arange(len(anchor), device=anchor.device)
        return F.cross_entropy(logits / self.temperature, target)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        es, et = self._embeddings(student, teacher.detach())
        v = F.normalize(self.head_s(es), dim=1)
        u = F.normalize(self.head_t(et), dim=1)
        if self._fill is None:
            self._fill = (int(self.queue_len), int(self.queue_ptr))
        k = self._fill[0]
        # clones: autograd keeps the negatives for backward, and _enqueue writes the buffers in place
        loss = self._nce(v, u, self.queue_t[:k].clone()) + self._nce(u, v, self.queue_s[:k].clone())
        if self.training and torch.is_grad_enabled() and self.queue_size:
            self._enqueue(v.detach(), u.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, v: torch.Tensor, u: torch.Tensor) -> None:
        n, b = self.queue_size, min(len(v), self.queue_size)
        length, ptr = self._fill or (0, 0)
        idx = (ptr + torch.arange(b, device=v.device)) % n
        self.queue_s[idx] = v[-b:].to(self.queue_s.dtype)
        self.queue_t[idx] = u[-b:].to(self.queue_t.dtype)
        self._fill = (min(length + b, n), (ptr + b) % n)
        self.queue_len.fill_(self._fill[0])
        self.queue_ptr.fill_(self._fill[1])
