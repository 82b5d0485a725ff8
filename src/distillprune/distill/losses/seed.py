"""SEED: self-supervised distillation of a representation by matching similarity distributions over a queue
(Fang et al., 2021, "SEED: Self-supervised Distillation For Visual Representation", ICLR; the queue of
negatives as in MoCo, He et al. 2020). No labels and no classifier: the student learns how the teacher
places each image among many others.

    s = normalize(P e_s),  t = normalize(e_t),  Q = the last K teacher embeddings (normalised)
    p_t = softmax([t . t, t . Q] / tau_t)          the teacher's similarities (to itself and the queue)
    p_s = softmax([s . t, s . Q] / tau_s)          the student's, to the same teacher embeddings
    L = KL(p_t || p_s)  averaged over the batch, then t is pushed onto the queue (the oldest entries drop)

The paper's soft cross-entropy differs from this KL by the teacher's entropy, a constant of the student:
same gradients, but 0 is reachable. A sharp teacher (``teacher_temperature`` 0.01) makes the teacher's own
embedding the positive and the queue the negatives (a contrastive loss with the teacher as the key
encoder); a softer one transfers the teacher's ranking of the queue. ``P`` is a learned projection when the
widths differ (another architecture), else the identity. The embeddings are the model outputs (``tap`` reads
a module instead). The queue starts as random unit vectors (as SEED's does) and is part of the objective's
state (saved in the epoch checkpoints); under torchrun each process keeps its own queue. Label-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, embedding_pair, parse_tap
from distillprune.distill.losses.sequence import projection


@LOSSES.register("seed")
class SEEDLoss(DistillLoss):
    width_free = True
    queue: torch.Tensor  # (K, D_t) buffers: the queued teacher embeddings and the next row to overwrite
    ptr: torch.Tensor

    def __init__(
        self,
        queue: int = 4096,
        temperature: float = 0.2,
        teacher_temperature: float = 0.01,
        tap: str | list[str] | None = None,
    ):
        super().__init__()
        if queue < 1:
            raise ValueError(f"seed.queue must be >= 1 teacher embeddings, got {queue}")
        if temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(f"seed: temperatures must be > 0, got {temperature}, {teacher_temperature}")
        self.size, self.temperature, self.teacher_temperature = (
            int(queue),
            float(temperature),
            float(teacher_temperature),
        )
        self.taps = parse_tap(tap, "seed")
        self.proj: nn.Module = nn.Identity()
        self.register_buffer("queue", torch.zeros(0, 0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        es, et = embedding_pair(self.taps, student, teacher)
        if not isinstance(self.proj, nn.Linear) or (self.proj.in_features, self.proj.out_features) != (
            es.shape[1],
            et.shape[1],
        ):
            self.proj = projection(es.shape[1], et.shape[1], es.device)
        if self.queue.shape != (self.size, et.shape[1]):  # kept across prune steps: the teacher stays
            self.queue = F.normalize(torch.randn(self.size, et.shape[1], device=et.device), dim=1)
            self.ptr = torch.zeros((), dtype=torch.long, device=et.device)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        es, et = embedding_pair(self.taps, student, teacher.detach())
        s = F.normalize(self.proj(es), dim=1)
        t = F.normalize(et, dim=1)
        q = self.queue.detach().clone().to(t.dtype)  # a copy: the queue changes after this step
        s_logits = torch.cat([(s * t).sum(1, keepdim=True), s @ q.T], dim=1) / self.temperature
        t_logits = torch.cat([(t * t).sum(1, keepdim=True), t @ q.T], dim=1) / self.teacher_temperature
        loss = F.kl_div(
            F.log_softmax(s_logits, dim=1), F.log_softmax(t_logits, dim=1), log_target=True, reduction="batchmean"
        )
        if self.training and torch.is_grad_enabled():  # training steps only: not probes nor validation
            self._enqueue(t.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, t: torch.Tensor) -> None:
        n = min(len(t), self.size)
        at = (int(self.ptr) + torch.arange(n, device=t.device)) % self.size
        self.queue[at] = t[-n:].to(self.queue.dtype)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
