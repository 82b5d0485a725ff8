"""A MobileNetV2-style network as a user would write it for small images (``bench/depthwise.py`` names it in its
recipes with ``model: {python: bench/depthwise_net.py:DepthwiseNet}``).

Inverted residual blocks (Sandler et al., CVPR'18): a 1x1 expansion, a depthwise 3x3, a linear 1x1 projection,
and an identity residual ``x + f(x)`` where the block keeps its shape (stride 1, same channels). Written for
32x32 inputs with MobileNetV2's own layout: a stride-2 stem and three stride-2 stages (32 -> 16 -> 8 -> 4 -> 2);
seven of the eleven blocks keep their shape and carry an identity residual.
"""

from __future__ import annotations

import torch
from torch import nn

#: (expansion t, output channels c, blocks n, stride of the first block s), as in MobileNetV2's table 2
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


def divisible(v: float, by: int = 8) -> int:
    """MobileNetV2's channel rounding: the nearest multiple of ``by``, never below 90% of ``v``."""
    out = max(by, int(v + by / 2) // by * by)
    return out + by if out < 0.9 * v else out


class DepthwiseNet(nn.Module):
    """``mult``: MobileNetV2's width multiplier (stem and stages; the last 1x1 conv keeps ``last``)."""

    def __init__(
        self, in_chans: int = 1, num_classes: int = 10, width: int = 16, last: int = 256, mult: float = 1.0
    ) -> None:
        super().__init__()
        cin = divisible(width * mult)
        self.stem = conv_bn(in_chans, cin, 3, stride=2)
        blocks: list[nn.Module] = []
        for t, c, n, s in STAGES:
            for i in range(n):
                cout = divisible(c * mult)
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.head = conv_bn(cin, last, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(x.mean((2, 3)))
