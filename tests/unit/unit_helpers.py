"""Tiny models and data for the unit tests (imported as a plain module: tests/unit is on sys.path)."""

from __future__ import annotations

import torch

from distillprune.data.base import DataBundle, Split, channel_stats
from distillprune.models import build_model

TINY_DIGITS = {"widths": (8, 16, 16), "blocks": (2, 1, 1)}


def tiny_digits_cnn(seed: int = 0, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", num_classes, (1, 8, 8), **TINY_DIGITS)


def tiny_resnet(seed: int = 0, widths=(16, 32), blocks=(2, 2), in_ch: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet", 10, (in_ch, 8, 8), widths=widths, blocks=blocks)


@torch.no_grad()
def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN running stats and affine params, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def random_bundle(
    n_train: int = 96, n_test: int = 40, shape=(1, 8, 8), num_classes: int = 10, seed: int = 0, uint8: bool = False
) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    if uint8:
        xtr = torch.randint(0, 256, (n_train, *shape), generator=g, dtype=torch.uint8)
        xte = torch.randint(0, 256, (n_test, *shape), generator=g, dtype=torch.uint8)
    else:
        xtr, xte = torch.rand(n_train, *shape, generator=g), torch.rand(n_test, *shape, generator=g)
    ytr = torch.randint(0, num_classes, (n_train,), generator=g)
    yte = torch.randint(0, num_classes, (n_test,), generator=g)
    mean, std = channel_stats(xtr)
    return DataBundle(
        Split(xtr, ytr), Split(xte, yte), num_classes, [str(i) for i in range(num_classes)], mean, std, "random"
    )


def uniform_steps(model: torch.nn.Module, width, example: torch.Tensor, steps: int = 1, num_classes: int = 10):
    """Uniform width steps (``width``: a WidthConfig or its dict) on ``model`` in place, one-shot: yields each
    step's ChannelsOp (None when the step cut nothing), as the prune session cuts them."""
    from distillprune.data.base import Examples
    from distillprune.prune.config import PruneConfig
    from distillprune.prune.session import PruneSession

    history: list = []
    cfg = PruneConfig(width=width, steps=steps, distill=None)
    session = PruneSession(model, cfg, Examples(example, num_classes), history=history)
    session.prepare()
    for k in range(steps):
        before = len(history)
        try:
            session.step(k)
        except Exception as e:  # the last step of a request that removes nothing raises after cutting nothing
            if "removes no channel" not in str(e):
                raise
        yield history[before] if len(history) > before else None


def uniform_cut(model: torch.nn.Module, width, example: torch.Tensor, steps: int = 1, num_classes: int = 10) -> list:
    """All of :func:`uniform_steps` at once: the ChannelsOps of the steps that cut something."""
    return [op for op in uniform_steps(model, width, example, steps, num_classes) if op is not None]
