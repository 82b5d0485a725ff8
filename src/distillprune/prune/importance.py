"""Channel-group importance criteria, one registration each (Torch-Pruning's implementations)."""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp

from distillprune.core.registry import Registry

IMPORTANCE: Registry[Callable[[], tp.importance.Importance]] = Registry("importance criterion")
# criteria that need gradients accumulated on the model before scoring
NEEDS_GRADIENTS = {"taylor"}

IMPORTANCE.register("l1")(lambda: tp.importance.GroupMagnitudeImportance(p=1))
IMPORTANCE.register("l2")(lambda: tp.importance.GroupMagnitudeImportance(p=2))
IMPORTANCE.register("taylor")(lambda: tp.importance.GroupTaylorImportance())
IMPORTANCE.register("bn_scale")(lambda: tp.importance.BNScaleImportance())
