"""Feature mimicking for a compressed student (MiR: Wang et al., 2022, "Compressing Models with Few Samples:
Mimicking then Replacing", CVPR; the feature reconstruction of FSKD, Li et al., 2020, CVPR).

    L = mean_k  || A_k(f_s^k) - f_t^k[:, K_k] ||^2 / || f_t^k[:, K_k] ||^2

over the student's stage outputs -- the last of them is the pre-pooling map the classifier reads -- against the
teacher's. A pruned student is compared channel by channel through the kept indices ``K_k`` (as ``aligned``,
``A_k`` the identity); where no indices exist and the widths differ, ``A_k`` is a 1x1 convolution (a linear map
for vectors) trained with the student and dropped afterwards -- it lives in the loss, never in the model, so
the export and the speed are unchanged. Labels are optional (the loss reads the teacher only).

``freeze_head`` (default on, as MiR): the student's classifier (its last Linear) does not train while this loss
is in the objective, so the features are pulled back under the teacher's head instead of the head drifting
to meet them. A recovered student's head is the teacher's; freezing it is what lets feature error alone
say how far the student is from the teacher's function.
"""

from __future__ import annotations

import torch
from torch import nn

from distillprune.distill.losses.aligned import AlignedFeatureLoss, tap_channels
from distillprune.distill.losses.base import LOSSES, Outputs, same_batch
from distillprune.distill.losses.feature import make_adapter
from distillprune.errors import DistillpruneError


@LOSSES.register("mimic")
class MimicLoss(AlignedFeatureLoss):
    zero_when_equal = True
    example = {"pairs": ["f"]}

    def __init__(
        self,
        pairs: list[list[str]] | list[str] | None = None,
        channels: list[list] | None = None,
        freeze_head: bool = True,
    ) -> None:
        super().__init__(pairs, channels)
        if not isinstance(freeze_head, bool):
            raise ValueError(f"mimic.freeze_head must be true or false, got {freeze_head!r}")
        self.freeze_head = freeze_head
        self.adapters = nn.ModuleList()
        self._frozen: list[nn.Parameter] = []

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        super().bind(student, teacher)
        self.release()
        if self.freeze_head:
            head = [m for m in student.modules() if isinstance(m, nn.Linear)]
            if head:
                self._frozen = [p for p in head[-1].parameters() if p.requires_grad]
                for p in self._frozen:
                    p.requires_grad_(False)

    def release(self) -> None:
        """The classifier trains again (the Distiller calls it when it detaches from the student)."""
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self.index, adapters = [], []
        for s, t in self.taps:
            fs, ft = student.features[s], teacher.features[t]
            idx = None
            if fs.shape[1] != ft.shape[1]:
                idx = self.explicit.get(s)
                idx = idx if idx is not None else tap_channels(self.kept, s, fs.shape[1])
            if idx is None and fs.shape[1] != ft.shape[1]:
                adapters.append(make_adapter(fs, ft))  # no kept channels to align by: a learned 1x1 map
            else:
                adapters.append(nn.Identity())
                if idx is not None:
                    idx = self._index(s, t, fs, ft)
            self.index.append(idx)
        self.adapters = nn.ModuleList(adapters).to(student.logits.device)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        teacher = teacher.detach()
        if len(self.index) != len(self.taps):
            raise DistillpruneError("mimic: call setup() (the Distiller's attach) before the loss")
        total = student.logits.new_zeros(()).float()
        for (s, t), idx, adapt in zip(self.taps, self.index, self.adapters, strict=True):
            fs, ft = student.features[s], teacher.features[t]
            same_batch(fs, ft, f"feature '{s}'")
            ft = (ft if idx is None else ft.index_select(1, idx.to(ft.device))).float()
            fs = adapt(fs).float()
            if fs.shape != ft.shape:
                raise DistillpruneError(f"mimic: student '{s}' {tuple(fs.shape)} and teacher {tuple(ft.shape)} differ")
            total = total + (fs - ft).pow(2).sum() / ft.pow(2).sum().clamp_min(1e-12)
        return total / len(self.taps)
