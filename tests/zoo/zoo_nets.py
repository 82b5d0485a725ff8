"""Small hand-written networks covering the graph patterns users bring: concat, grouped and depthwise
convs, a custom parameterised layer, residual adds (in a block and in the parent's forward), SE blocks,
a transformer-style MLP block. Each is 3x16x16 -> 10 classes and builds in milliseconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ConcatGrouped(nn.Module):
    """Two stems concatenated into a grouped conv (the pattern Torch-Pruning cuts wrongly), then a residual."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16)
        self.g = cbr(32, 32, groups=2)
        self.block = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.g(torch.cat([self.a(x), self.b(x)], 1))
        x = F.relu(x + self.block(x))  # a residual add in this (the root's) forward
        return self.fc(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            cbr(cin, hidden, 1),
            cbr(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class Depthwise(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16), InvertedResidual(16, 24, 2), InvertedResidual(24, 24), InvertedResidual(24, 24)
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ChannelScale(nn.Module):
    """A custom parameterised layer: a learnt per-channel scale (a bare nn.Parameter, no nn.Conv/Linear)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class CustomLayer(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.body1 = nn.Sequential(cbr(16, 16), nn.Conv2d(16, 16, 3, 1, 1), ChannelScale(16))
        self.body2 = nn.Sequential(cbr(16, 16), nn.Conv2d(16, 16, 3, 1, 1), ChannelScale(16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.body1(x)
        x = x + self.body2(x)
        return self.fc(x.mean((2, 3)))


class SE(nn.Module):
    def __init__(self, channels: int, reduce: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduce, 1)
        self.fc2 = nn.Conv2d(channels // reduce, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class SEBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            cbr(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)
        )
        self.se = SE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.se(self.body(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.layer = nn.Sequential(SEBlock(16), SEBlock(16))
        self.down = cbr(16, 32, stride=2)
        self.layer2 = nn.Sequential(SEBlock(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.down(self.layer(self.stem(x)))).mean((2, 3)))


class MlpBlock(nn.Module):
    """A transformer-style block without attention: pre-norm token MLP and channel MLP, each residual."""

    def __init__(self, dim: int, tokens: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, tokens), nn.GELU())
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class MlpMixer(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 32, patch: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (16 // patch) ** 2
        self.blocks = nn.Sequential(MlpBlock(dim, tokens, 64), MlpBlock(dim, tokens, 64))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        return self.fc(self.norm(self.blocks(x)).mean(1))


ZOO = {
    "concat_grouped": ConcatGrouped,
    "depthwise": Depthwise,
    "custom_layer": CustomLayer,
    "squeeze_excite": SqueezeExcite,
    "mlp_mixer": MlpMixer,
}


class Plain(nn.Module):
    """No identity residual: the only shortcut changes shape (a strided 1x1 conv), so depth has nothing to cut."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.body = nn.Sequential(cbr(16, 32, stride=2), nn.Conv2d(32, 32, 3, 1, 1))
        self.short = nn.Conv2d(16, 32, 1, 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.body(x) + self.short(x))
        return self.fc(x.mean((2, 3)))


ZOO["plain"] = Plain
#: residual blocks each net has (found in its graph); 0: depth pruning must say why
RESIDUALS = {
    "concat_grouped": ["block"],
    "depthwise": ["blocks.0", "blocks.2", "blocks.3"],
    "custom_layer": ["body1", "body2"],
    "squeeze_excite": ["layer.0", "layer.1", "layer2.0"],
    "mlp_mixer": ["blocks.0.token_mlp", "blocks.0.mlp", "blocks.1.token_mlp", "blocks.1.mlp"],
    "plain": [],
}
