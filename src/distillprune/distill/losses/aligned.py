"""Channel-aligned feature distillation for a student that is the pruned teacher.

    L = mean_k  || f_s^k - f_t^k[:, K_k] ||^2 / || f_t^k[:, K_k] ||^2

``K_k`` are the teacher's indices of the channels the student kept at tap ``k`` (a block or stage output), so
every student channel is compared with the very teacher channel it was cut from: no adapter to learn, no
information lost through a projection (the FitNets hint of Romero et al., 2015, without its regressor; the
alignment is what pruning gives for free, as in the feature reconstruction of He et al., 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks"). Each tap's error is divided by the teacher feature's
energy, so the weight does not depend on the feature scale. Use it beside ``kd`` (the logits).

Inside a prune stage the session supplies ``K_k`` after every cut (``prune.alignment.kept_channels``: composed
over all the run's cuts and block removals); ``channels`` gives them by hand. ``pairs`` defaults to the
model's stages (its top-level children that hold a convolution or linear layer, the head excepted).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, parse_pairs, same_batch
from distillprune.errors import DistillpruneError

#: a session's kept-channel map: layer name -> the dense indices of its surviving output channels
Kept = Mapping[str, torch.Tensor]


@LOSSES.register("aligned")
class AlignedFeatureLoss(DistillLoss):
    zero_when_equal = True
    example = {"pairs": ["f"], "channels": [["f", [0, 2, 3, 5]]]}

    def __init__(self, pairs: list[list[str]] | list[str] | None = None, channels: list[list] | None = None) -> None:
        super().__init__()
        self.taps = [] if pairs is None else parse_pairs(pairs, "aligned")
        self.explicit = dict(_channels(channels or []))
        self.kept: Kept = {}
        self.index: list[torch.Tensor | None] = []

    def align(self, kept: Kept) -> None:
        """The kept-channel map of the current student (called by the prune session after each cut)."""
        self.kept = dict(kept)

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        if not self.taps:
            self.taps = [(p, p) for p in stages(teacher)]
            if not self.taps:
                raise DistillpruneError(
                    f"aligned: {type(teacher).__name__} has no stage to tap; give pairs: [module, ...]"
                )

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self.index = [self._index(s, t, student.features[s], teacher.features[t]) for s, t in self.taps]

    def _index(self, s: str, t: str, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor | None:
        """The teacher channels of the student's tap ``s`` (None: all of them, in order)."""
        if fs.dim() not in (2, 4) or ft.dim() != fs.dim():  # channels on dim 1: vectors, feature maps
            raise DistillpruneError(
                f"aligned: cannot align student '{s}' {tuple(fs.shape)} to teacher {tuple(ft.shape)}"
            )
        cs, ct = fs.shape[1], ft.shape[1]
        if cs == ct:  # kept indices are increasing: all ct of ct channels can only be 0..ct-1
            return None
        idx = self.explicit.get(s)
        if idx is None:
            idx = tap_channels(self.kept, s, cs)
        if idx is None:
            raise DistillpruneError(
                f"aligned: student '{s}' has {cs} channels and teacher '{t}' {ct}, and no kept-channel indices: "
                "the student must be the pruned teacher inside a prune stage (or give channels)"
            )
        if len(idx) != cs or int(idx.max()) >= ct:
            raise DistillpruneError(
                f"aligned: {len(idx)} kept indices (max {int(idx.max())}) for student '{s}' with {cs} channels "
                f"and teacher '{t}' with {ct}"
            )
        return idx.to(ft.device)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        teacher = teacher.detach()
        if len(self.index) != len(self.taps):
            raise DistillpruneError("aligned: call setup() (the Distiller's attach) before the loss")
        total = student.logits.new_zeros(()).float()
        for (s, t), idx in zip(self.taps, self.index, strict=True):
            fs, ft = student.features[s], teacher.features[t]
            same_batch(fs, ft, f"feature '{s}'")
            ft = ft if idx is None else ft.index_select(1, idx.to(ft.device))
            if fs.shape != ft.shape:
                raise DistillpruneError(
                    f"aligned: student '{s}' {tuple(fs.shape)} and teacher {tuple(ft.shape)} differ"
                )
            ft = ft.float()
            total = total + (fs.float() - ft).pow(2).sum() / ft.pow(2).sum().clamp_min(1e-12)
        return total / len(self.taps)


def _channels(channels: list[list]) -> list[tuple[str, torch.Tensor]]:
    """``[[student_module, [teacher channel index, ...]], ...]``, the indices increasing."""
    out = []
    for entry in channels:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
        idx = torch.as_tensor(entry[1], dtype=torch.long) if ok and isinstance(entry[1], (list, tuple)) else None
        if idx is None or idx.dim() != 1 or not len(idx) or (idx < 0).any() or (idx.diff() <= 0).any():
            raise ValueError(f"aligned.channels: expected [student_module, [increasing indices]], got {entry!r}")
        out.append((entry[0], idx))
    return out


def tap_channels(kept: Kept, path: str, width: int) -> torch.Tensor | None:
    """The kept indices of the output of module ``path``: those of the last layer inside it (module order)
    that keeps ``width`` channels. In a residual stage every layer on the residual stream shares one channel
    group, and the last one registered (the block's last BatchNorm or its shortcut's) writes the output."""
    inside = [k for k in kept if k == path or k.startswith(f"{path}.")]
    for name in reversed(inside):
        if len(kept[name]) == width:
            return kept[name]
    return None


def stages(model: nn.Module) -> list[str]:
    """The model's top-level children that hold a convolution or a linear layer, except the last one (the
    classifier head): a ResNet's ``layer1..N``, a stem; the default taps."""
    found = [
        name
        for name, child in model.named_children()
        if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in child.modules())
    ]
    return [n for n in found[:-1] if not isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))]
