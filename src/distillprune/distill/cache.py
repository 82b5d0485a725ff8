"""Teacher-output cache: the frozen teacher's logits (and tapped features) for every training
sample, computed once, then looked up, so distillation costs little beyond the student's own
forward and backward pass.

It needs inputs that are the same every epoch (no random crop or flip): the teacher's output of
a sample is then a constant. Lookups follow the loader's sample order for the epoch
(``TensorLoader.order``), which the trainer hands over at the start of each epoch
(``begin_epoch``); the first batch of every epoch is checked against a live teacher forward, so a
cache that fell out of step with the data fails loudly instead of distilling from the wrong
samples.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from distillprune.core.batch import Batch, NamedInputs, call
from distillprune.core.progress import expect, phase, tick
from distillprune.core.taps import FeatureTaps
from distillprune.distill.losses.base import Outputs
from distillprune.errors import DistillpruneError


class TeacherCache:
    def __init__(self, chunk: int = 512):
        self.chunk = chunk
        self.logits: torch.Tensor | None = None
        self.features: dict[str, torch.Tensor] = {}
        self.seconds = 0.0  # time spent building (one teacher pass over the training split)
        self._key: tuple | None = None
        self._order: torch.Tensor | None = None
        self._pos, self._verify = 0, False

    def begin_epoch(self, teacher: nn.Module, taps: FeatureTaps, loader) -> None:
        if loader.crop_padding or loader.hflip:
            raise DistillpruneError(
                "the teacher cache needs training inputs that do not change between epochs: "
                f"turn off random augmentation (crop_padding={loader.crop_padding}, "
                f"hflip={loader.hflip}) or set distill.cache: false"
            )
        key = (loader.split.x.data_ptr(), tuple(loader.split.x.shape), loader.split.x.device)
        if key != self._key:
            self._build(teacher, taps, loader)
            self._key = key
        assert self.logits is not None  # built now or for an earlier epoch
        self._order = loader.order().to(self.logits.device)
        self._pos, self._verify = 0, True

    @torch.no_grad()
    @phase("caching the teacher's outputs", unit="samples")
    def _build(self, teacher: nn.Module, taps: FeatureTaps, loader) -> None:
        t0 = time.perf_counter()
        was = teacher.training
        teacher.eval()
        logits: list[torch.Tensor] = []
        feats: dict[str, list[torch.Tensor]] = {}
        x_all = loader.split.x
        if isinstance(x_all, NamedInputs) and taps.paths:
            raise DistillpruneError(
                "the teacher cache holds logits only for text inputs (feature taps have a "
                "sequence length per batch): set distill.cache: false with feature losses"
            )
        expect(len(x_all))
        for i in range(0, len(x_all), self.chunk):
            tick(min(self.chunk, len(x_all) - i))
            taps.clear()
            logits.append(call(teacher, loader.prepare(x_all[i : i + self.chunk])))
            for k, v in taps.features.items():
                feats.setdefault(k, []).append(v)
        teacher.train(was)
        self.logits = torch.cat(logits)
        self.features = {k: torch.cat(v) for k, v in feats.items()}
        self.seconds += time.perf_counter() - t0

    def lookup(self, x: Batch, teacher: nn.Module, taps: FeatureTaps) -> Outputs:
        if self._order is None or self.logits is None:
            raise DistillpruneError(
                "teacher cache used before begin_epoch: the trainer must call "
                "objective.begin_epoch(loader, epoch, epochs)"
            )
        idx = self._order[self._pos : self._pos + len(x)]
        if len(idx) != len(x):
            raise DistillpruneError(f"teacher cache: batch of {len(x)} past the end of the epoch's order")
        self._pos += len(x)
        out = Outputs(self.logits[idx], {k: v[idx] for k, v in self.features.items()})
        if self._verify:
            self._check(out.logits, x, teacher, taps)
            self._verify = False
        return out

    @torch.no_grad()
    def _check(self, cached: torch.Tensor, x: Batch, teacher: nn.Module, taps: FeatureTaps) -> None:
        taps.clear()
        live = call(teacher, x).float()
        err = float((cached.float() - live).norm() / live.norm().clamp_min(1e-12))
        if err > 0.05:
            raise DistillpruneError(
                f"teacher cache is out of step with the data (relative error {err:.3g} on the "
                "epoch's first batch): the inputs or their order changed between epochs"
            )
