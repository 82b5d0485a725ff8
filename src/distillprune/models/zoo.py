"""The zoo's builders, registered in MODELS. Each takes (num_classes, input_shape, **kwargs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from distillprune.core.checkpoint import ARCH_BUILDERS, ArchSpec
from distillprune.core.extras import import_extra
from distillprune.errors import DistillpruneError
from distillprune.models.mlp import MLP
from distillprune.models.registry import MODELS, Builder, with_example
from distillprune.models.resnet import ResNet, cifar_resnet


def _cifar(depth: int) -> Builder:
    def build(num_classes: int, input_shape: Sequence[int], width: int = 16) -> nn.Module:
        return cifar_resnet(depth, num_classes, input_shape[0], width)

    build.__doc__ = f"CIFAR ResNet-{depth} (3 stages of {(depth - 2) // 6} basic blocks, 1x1-conv shortcuts)."
    return build


for _d in (20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_d}")(_cifar(_d))


@MODELS.register("digits_cnn")
@with_example((1, 8, 8), widths=[8, 16, 16], blocks=[1, 1, 1])
def digits_cnn(
    num_classes: int,
    input_shape: Sequence[int],
    widths: Sequence[int] = (32, 64, 128),
    blocks: Sequence[int] = (2, 2, 2),
) -> nn.Module:
    """Residual CNN for small images (the embedded digits default): widths 32/64/128, 2 blocks a stage."""
    return ResNet(tuple(widths), tuple(blocks), num_classes, input_shape[0])


@MODELS.register("resnet")
@with_example((3, 16, 16), widths=[8, 16, 16], blocks=[1, 2, 1])
def resnet(
    num_classes: int,
    input_shape: Sequence[int],
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (3, 3, 3),
) -> nn.Module:
    """A CIFAR-style ResNet of any widths and blocks per stage."""
    return ResNet(tuple(widths), tuple(blocks), num_classes, input_shape[0])


@MODELS.register("mlp")
@with_example((1, 8, 8), hidden=[32, 16])
def mlp(num_classes: int, input_shape: Sequence[int], hidden: Sequence[int] = (256, 128)) -> nn.Module:
    """Flatten, then Linear+ReLU layers."""
    return MLP(math.prod(input_shape), tuple(hidden), num_classes)


#: kwargs that would make torchvision/timm read or fetch files (a hub download, a pickled checkpoint): a
#: model's weights come from ``weights:`` (loaded with weights_only / safetensors), never through these
FILE_KWARGS = frozenset(
    {
        "weights",
        "weights_backbone",
        "pretrained",
        "checkpoint_path",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "cache_dir",
    }
)


def _external(module: str, extra: str, make: Callable[[Any, str, int, dict], nn.Module]) -> Builder:
    def build(num_classes: int, input_shape: Sequence[int], arch: str = "", **kw: Any) -> nn.Module:
        banned = sorted(FILE_KWARGS & set(kw))
        if banned:
            raise DistillpruneError(
                f"model '{module.split('.')[0]}': kwargs {banned} would load files or download; give trained "
                "weights as model.weights (a state_dict file) instead"
            )
        lib = import_extra(module, extra, f"model '{module.split('.')[0]}'")
        if not arch:
            raise DistillpruneError(f"model '{module}' needs kwargs.arch (e.g. resnet18)")
        return make(lib, arch, num_classes, kw)

    build.__doc__ = f"Any {module} architecture by name (kwargs.arch), randomly initialised (no hub download)."
    return build


MODELS.register("torchvision")(
    with_example((3, 32, 32), "torchvision", arch="resnet18")(
        _external(
            "torchvision.models", "vision", lambda lib, a, n, kw: lib.get_model(a, weights=None, num_classes=n, **kw)
        )
    )
)
MODELS.register("timm")(
    with_example((3, 32, 32), "timm", arch="resnet18")(
        _external("timm", "vision", lambda lib, a, n, kw: lib.create_model(a, pretrained=False, num_classes=n, **kw))
    )
)


def build_model(name: str, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    try:
        return MODELS.get(name)(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    except (
        TypeError,
        ValueError,
        RuntimeError,
        AttributeError,
        IndexError,
        KeyError,
        ZeroDivisionError,
        OverflowError,
    ) as e:  # a builder that cannot make sense of its kwargs (or of the data's shape)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistillpruneError(
            f"model '{name}': bad kwargs {kwargs} for inputs {tuple(input_shape)} and {num_classes} classes: {first}"
        ) from None


@ARCH_BUILDERS.register("zoo")
def _from_spec(spec: ArchSpec) -> nn.Module:
    return build_model(str(spec.name), spec.num_classes, spec.input_shape, **spec.kwargs)
