"""Training objectives: plain cross-entropy, or distillation from a frozen teacher.

An objective is called as ``objective(model, x, y) -> (loss, logits)``; ``attach`` installs the
feature taps (forward hooks) on the current student and builds adapters from a probe batch.
The teacher is frozen: eval mode, no gradients, forward under ``torch.no_grad`` (not
``inference_mode``: its outputs are saved for the student's backward, which inference tensors
refuse), by default through a BatchNorm-folded, checked copy (``distill.fast_teacher``). Optional hooks
the trainer calls when present: ``begin_epoch(loader, epoch, epochs)`` (schedules, teacher cache),
``check_labels(has_labels)`` (before training), ``trainable()`` (extra parameters to optimise), ``align(kept)``
(the prune session's kept-channel map after a cut); the attribute ``views`` asks the trainer for two augmented
views of every image, which the teacher and the student both see.
Online (mutual) distillation, where the teacher trains too, is ``distill.mutual.MutualDistiller``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, call
from distillprune.core.taps import FeatureTaps
from distillprune.data.views import Views, ViewsConfig
from distillprune.distill.cache import TeacherCache
from distillprune.distill.fast_teacher import TeacherSpeed, fast_teacher
from distillprune.distill.losses import Outputs
from distillprune.distill.losses.base import LOSSES, DistillLoss, sequence_mask
from distillprune.distill.schedule import Clock, Term, build_term
from distillprune.errors import DataError, DistillpruneError


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def attach(self, model: nn.Module, probe: Batch) -> None:
        """Nothing to attach: cross-entropy reads only the logits."""

    def detach(self) -> None:
        """Nothing to remove."""

    def check_labels(self, has_labels: bool) -> None:
        if not has_labels:
            raise DataError("training without labels needs a teacher (a distill stage with a teacher)")

    def __call__(self, model: nn.Module, x: Batch, y: torch.Tensor | None):
        if y is None:
            raise DataError("training without labels needs a teacher (a distill stage with a teacher)")
        logits = call(model, x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, x: Batch, y: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy on held-out data (no state to keep apart from training)."""
        return self(model, x, y)[0]


def freeze(teacher: nn.Module) -> nn.Module:
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def label_free_losses() -> list[str]:
    """The registered losses that learn from the teacher alone (no labels needed), by name."""
    return [n for n, cls in LOSSES.items() if cls.reads_teacher and not cls.needs_labels]


def check_terms(terms: list[Term], has_labels: bool) -> None:
    """Fail before training when the losses cannot work on this data (label-free needs a teacher loss)."""
    if has_labels:
        return
    need = [t.name for t in terms if t.loss.needs_labels]
    if need:
        raise DataError(
            f"loss {', '.join(need)} needs labels but the training data has none (data.labels: false); "
            f"label-free distillation works with {', '.join(label_free_losses())}"
        )
    if not any(t.loss.reads_teacher for t in terms):
        raise DataError(
            "the training data has no labels and no loss reads the teacher: nothing to learn from "
            f"(losses: {', '.join(t.name for t in terms)})"
        )


@torch.no_grad()
def probe_terms(terms: list[Term], s: Outputs, t: Outputs, skip_labelled: bool = False) -> None:
    """Set up every loss on the probe outputs and evaluate it once, so a shape mismatch fails now."""
    dummy = t.logits.argmax(1)  # stand-in labels: the probe only checks shapes
    for term in terms:
        term.loss.setup(s, t)
        if not (skip_labelled and term.loss.needs_labels):
            term.loss(s, t, dummy)


class Distiller(nn.Module):
    """Weighted sum of registered distillation losses between a student and a frozen teacher."""

    def __init__(
        self,
        teacher: nn.Module,
        losses: list[tuple[float, DistillLoss]] | list[Term],
        *,
        cache: bool = False,
        fold_teacher: bool = True,
        compile_teacher: bool = False,
        views: ViewsConfig | None = None,
    ):
        super().__init__()
        self.views = views  # the trainer then serves two augmented views of every image (data.views)
        self.teacher = [freeze(teacher)]  # a list: keep the teacher out of this module's parameters
        self.terms = [t if isinstance(t, Term) else Term(type(t[1]).__name__, t[1], t[0]) for t in losses]
        self.losses = nn.ModuleList(t.loss for t in self.terms)
        self.cache = TeacherCache() if cache else None
        self.clock = Clock()
        self._s_taps: FeatureTaps | None = None
        self._t_taps: FeatureTaps | None = None
        self.fold_teacher, self.compile_teacher = fold_teacher, compile_teacher
        self.teacher_speed = TeacherSpeed()
        self._fast: list = []  # [(key, module to call, module the taps attach to)], built once per device

    @classmethod
    def from_specs(
        cls,
        teacher: nn.Module,
        specs: list[dict],
        *,
        cache: bool = False,
        views: ViewsConfig | None = None,
        **speed: bool,
    ) -> Distiller:
        return cls(teacher, [build_term(s) for s in specs], cache=cache, views=views, **speed)

    def _teacher_for(self, t_paths: list[str], probe: Batch) -> nn.Module:
        """The module the teacher's taps attach to (built once per tap set and device)."""
        key = (tuple(t_paths), probe.device, self.fold_teacher, self.compile_teacher)
        if not self._fast or self._fast[0][0] != key:
            call, root, self.teacher_speed = fast_teacher(
                self.teacher[0], t_paths, probe, fold=self.fold_teacher, compile=self.compile_teacher
            )
            self._fast = [(key, call, root)]
        return self._fast[0][2]

    @property
    def _t_call(self) -> nn.Module:
        """The teacher's forward: its fast copy once attached (not a submodule: never trained or saved)."""
        return self._fast[0][1] if self._fast else self.teacher[0]

    def _paths(self) -> tuple[list[str], list[str]]:
        pairs = [p for term in self.terms for p in term.loss.taps]  # self.losses holds the same, in order
        return [s for s, _ in pairs], [t for _, t in pairs]

    def attach(self, model: nn.Module, probe: Batch) -> None:
        self.detach()
        for loss in self.losses:  # losses that choose their taps from the two networks (layer mapping)
            bind = getattr(loss, "bind", None)
            if callable(bind):
                bind(model, self.teacher[0])
        s_paths, t_paths = self._paths()
        t_root = self._teacher_for(t_paths, probe)
        self._s_taps, self._t_taps = FeatureTaps(model, s_paths), FeatureTaps(t_root, t_paths)
        was = model.training
        model.eval()  # the probe must not move the student's BN statistics
        try:
            with torch.no_grad():
                s_out, t_out = self._outputs(model, probe, live=True)
        finally:
            model.train(was)
        if s_out.logits.shape != t_out.logits.shape:
            raise DataError(
                f"student logits {tuple(s_out.logits.shape)} and teacher logits "
                f"{tuple(t_out.logits.shape)} differ: different numbers of classes?"
            )
        probe_terms(self.terms, s_out, t_out)

    def detach(self) -> None:
        """Remove the feature taps, and undo what losses did to the student when they bound to it (``release``:
        ``mimic`` freezes the classifier while it trains)."""
        for taps in (self._s_taps, self._t_taps):
            if taps is not None:
                taps.remove()
        self._s_taps = self._t_taps = None
        for loss in self.losses:
            release = getattr(loss, "release", None)
            if callable(release):
                release()

    def check_labels(self, has_labels: bool) -> None:
        check_terms(self.terms, has_labels)

    def align(self, kept: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Hand the losses that compare channel by channel (``aligned``) the student's kept-channel map;
        ``kept`` is called only when one of them is present (it replays the pruning history)."""
        takers = [f for f in (getattr(loss, "align", None) for loss in self.losses) if callable(f)]
        if takers:
            value = kept()
            for align in takers:
                align(value)

    def begin_epoch(self, loader, epoch: int, epochs: int) -> None:
        self.clock.begin_epoch(len(loader), epoch, epochs)
        if self.cache is not None:
            if self._t_taps is None:
                raise DistillpruneError("call attach() before begin_epoch()")
            self.cache.begin_epoch(self._t_call, self._t_taps, loader)

    def _outputs(self, model: nn.Module, x: Batch, live: bool = False) -> tuple[Outputs, Outputs]:
        if self._s_taps is None or self._t_taps is None:
            raise DistillpruneError("call attach() before using the Distiller")
        if self.cache is not None and not live:
            t = self.cache.lookup(x, self._t_call, self._t_taps)
        else:
            with torch.no_grad():
                self._t_taps.clear()
                t = Outputs(call(self._t_call, x), dict(self._t_taps.features))
        mask = sequence_mask(x)
        t.mask = mask
        self._s_taps.clear()
        s = Outputs(call(model, x), dict(self._s_taps.features), mask)
        return s, t

    def __call__(self, model: nn.Module, x: Batch | Views, y: torch.Tensor | None):
        progress = self.clock.tick()
        n = len(x)
        if isinstance(x, Views):  # both views in one batch: the teacher and the student see the same images
            x, y = x.both(), None if y is None else y.repeat(2)
        s, t = self._outputs(model, x)
        total = sum(term.weight_at(progress) * term.loss(s, t, y) for term in self.terms)
        return total, s.logits[:n]

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, x: Batch, y: torch.Tensor | None) -> torch.Tensor:
        """The objective on held-out data, for validation: the teacher run live (a teacher cache holds the
        training samples only), the loss weights where training stands, the clock and the adapters' state
        (their BatchNorm statistics) untouched."""
        was = self.losses.training
        self.losses.eval()
        try:
            s, t = self._outputs(model, x, live=True)
            progress = self.clock.now()
            return sum(term.weight_at(progress) * term.loss(s, t, y) for term in self.terms)  # type: ignore[return-value]
        finally:
            self.losses.train(was)

    def trainable(self) -> Iterator[nn.Parameter]:
        return self.losses.parameters()

    def reference(self) -> nn.Module:
        """The frozen teacher (what a fine-tune's ``trainable: near_cuts`` compares the student's layers with)."""
        return self.teacher[0]

    def to_device(self, device: torch.device) -> Distiller:
        self.teacher[0].to(device)
        return self.to(device)


def snapshot(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the default teacher: the model before pruning)."""
    return freeze(copy.deepcopy(model))
