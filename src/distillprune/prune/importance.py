"""Channel-group importance criteria, one registration each (Torch-Pruning's implementations)."""

from __future__ import annotations

import torch_pruning as tp

from distillprune.registries import IMPORTANCE  # (names declared there, so listing them imports no torch)

# criteria that need gradients accumulated on the model before scoring
NEEDS_GRADIENTS = {"taylor"}

IMPORTANCE.register("l1")(lambda: tp.importance.GroupMagnitudeImportance(p=1))
IMPORTANCE.register("l2")(lambda: tp.importance.GroupMagnitudeImportance(p=2))
IMPORTANCE.register("taylor")(lambda: tp.importance.GroupTaylorImportance())
IMPORTANCE.register("bn_scale")(lambda: tp.importance.BNScaleImportance())
