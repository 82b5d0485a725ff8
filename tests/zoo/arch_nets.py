"""The six architectures of the latency-target generality matrix, tiny and written from scratch as a user
would: MobileNetV2-like (depthwise, inverted residuals), ConvNeXt-like (depthwise 7x7, LayerNorm through
permutes, layer scale), a tiny ViT (its own attention with reshape/transpose, a class token; and variants whose
head count cannot be read, or that join the heads back to the input's width), raw ``nn.Parameter`` weights in
``F.conv2d`` beside one conv called twice, SE-ResNet, DenseNet-style concat; and a ResNeXt-like net (grouped
convs). Each maps 3x16x16 to 10 classes and builds in milliseconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zoo_nets import SE, Depthwise, cbr


class MobileNetLike(Depthwise):
    """MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project), from ``zoo_nets``."""


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, LayerNorm over channels-last (through permutes), pointwise MLP as Linear, layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, 2)
        self.stage1 = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.down = nn.Conv2d(16, 32, 2, 2)
        self.stage2 = nn.Sequential(ConvNeXtBlock(32))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class Attention(nn.Module):
    """Multi-head self-attention written by hand as timm writes it: one qkv Linear, reshape/permute into
    ``num_heads`` heads of ``head_dim``, the heads joined back to ``attn_dim``, proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = num_heads, dim // num_heads, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj(y)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4, patch: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (16 // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(ViTBlock(dim, heads), ViTBlock(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class UnreadAttention(Attention):
    """The same attention with no head count anywhere: the heads split by their size (``-1`` heads of
    ``head_dim``), so which number of heads a cut should leave cannot be read."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        del self.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * self.head_dim**-0.5
        return self.proj((att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, n, self.attn_dim))


class TinyViTUnread(TinyViT):
    """The tiny ViT with :class:`UnreadAttention`: its heads stay whole, named in the report."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes)
        for block in self.blocks:
            block.attn = UnreadAttention(32, 4)


class InputWidthAttention(Attention):
    """The same attention joining its heads back to the width of its input (``reshape(b, n, c)``): neither its
    heads nor the embedding width can be cut without breaking that forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * self.head_dim**-0.5
        return self.proj((att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, n, c))


class TinyViTWidth(TinyViT):
    """The tiny ViT with :class:`InputWidthAttention`: cuts of its heads and of its width are rolled back."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes)
        for block in self.blocks:
            block.attn = InputWidthAttention(32, 4)


class RawShared(nn.Module):
    """A conv whose weight is a bare ``nn.Parameter`` used through ``F.conv2d``, and one conv called twice."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.raw_w = nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)
        self.raw_b = nn.Parameter(torch.zeros(32))
        self.shared = nn.Conv2d(32, 32, 3, 1, 1)  # called twice: its cut must fit both uses
        self.bn1, self.bn2 = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.mid = cbr(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(self.stem(x), self.raw_w, self.raw_b, stride=2, padding=1))
        x = F.relu(self.bn1(self.shared(x)))
        x = self.mid(x)
        x = F.relu(self.bn2(self.shared(x)))
        return self.fc(x.mean((2, 3)))


class SEBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            cbr(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.se = SE(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.short(x) + self.se(self.body(x)))


class SEResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.layer1 = nn.Sequential(SEBottleneck(16, 16), SEBottleneck(16, 16))
        self.layer2 = nn.Sequential(SEBottleneck(16, 32, 2), SEBottleneck(32, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, 2 * growth, 1), cbr(2 * growth, growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNetLike(nn.Module):
    def __init__(self, num_classes: int = 10, growth: int = 8):
        super().__init__()
        self.stem = cbr(3, 16)
        self.block1 = nn.Sequential(DenseLayer(16, growth), DenseLayer(16 + growth, growth))
        self.trans = nn.Sequential(cbr(16 + 2 * growth, 24, 1), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(24, growth), DenseLayer(24 + growth, growth))
        self.fc = nn.Linear(24 + 2 * growth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.trans(self.block1(self.stem(x)))).mean((2, 3)))


class GroupedBlock(nn.Module):
    """ResNeXt / RegNet's bottleneck: 1x1, a grouped 3x3 (4 groups), 1x1, identity shortcut."""

    def __init__(self, channels: int, width: int, groups: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            cbr(channels, width, 1),
            cbr(width, width, 3, groups=groups),
            nn.Conv2d(width, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ResNeXtLike(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.layer = nn.Sequential(GroupedBlock(16, 32), GroupedBlock(16, 32))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(self.stem(x)).mean((2, 3)))


ARCHS = {
    "mobilenet_v2": MobileNetLike,
    "convnext": ConvNeXtLike,
    "vit": TinyViT,
    "raw_shared": RawShared,
    "se_resnet": SEResNet,
    "densenet": DenseNetLike,
    "resnext": ResNeXtLike,  # grouped convs (beyond the six of the issue)
}
#: beyond the matrix: an attention whose heads must stay whole
OTHERS = {"vit_unread": TinyViTUnread, "vit_width": TinyViTWidth}
