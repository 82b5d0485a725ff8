"""Two augmented views of every training image, for self-supervised objectives (SimCLR, BYOL).

The views are drawn on the data's device, for the whole batch at once, from the loader's seeded generator
(``data.base.TensorLoader``), like the loader's crop and flip: no per-sample Python, no worker processes, and
under torchrun every rank draws the parameters of the global batch and keeps its share, so the ranks together
see the single-process run's views.

Each view (SimCLR, Chen et al. 2020, appendix A; the CIFAR settings of MoCo v2 / solo-learn):

* **random resized crop** of ``crop_scale`` of the image's area and an aspect ratio in ``crop_ratio``, resized
  back to the input size (bilinear), and a **horizontal flip** with probability ``hflip`` -- both one affine
  resampling (``grid_sample``). The crop's sides are clipped to the image instead of being redrawn
  (torchvision retries ten times), which shifts a little mass towards full-width crops at extreme ratios;
* **colour jitter** with probability ``jitter.p``: brightness, contrast, saturation and hue factors, applied in
  that fixed order (torchvision shuffles it), the hue rotated in YIQ space (torchvision goes through HSV);
* **grayscale** with probability ``grayscale``.

Colour operations run on pixel values in [0, 1] (the normalised batch is un-normalised, changed, clipped
and normalised again); on one-channel images only brightness and contrast apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from distillprune.core.batch import Batch, NamedInputs
from distillprune.core.config import StrictModel
from distillprune.data.base import Split, TensorLoader, normalize, standard_layout
from distillprune.errors import DataError


class JitterConfig(StrictModel):
    """Colour jitter of a view (SimCLR's strength 0.5: 0.4 / 0.4 / 0.4 / 0.1, applied to 80 % of the views)."""

    brightness: float = Field(0.4, ge=0, le=1, description="brightness factor drawn in [1 - b, 1 + b]")
    contrast: float = Field(0.4, ge=0, le=1, description="contrast factor drawn in [1 - c, 1 + c]")
    saturation: float = Field(0.4, ge=0, le=1, description="saturation factor drawn in [1 - s, 1 + s]")
    hue: float = Field(0.1, ge=0, le=0.5, description="hue shift drawn in [-h, h] turns")
    p: float = Field(0.8, ge=0, le=1, description="share of the views that are jittered")


class ViewsConfig(StrictModel):
    """How the two views of an image are drawn (``ssl.views`` of a stage with a self-supervised objective)."""

    crop_scale: list[float] = Field(
        default_factory=lambda: [0.2, 1.0], description="[min, max] share of the image's area a crop keeps"
    )
    crop_ratio: list[float] = Field(
        default_factory=lambda: [3 / 4, 4 / 3], description="[min, max] aspect ratio (width / height) of a crop"
    )
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    jitter: JitterConfig | None = Field(default_factory=JitterConfig, description="colour jitter (null: none)")
    grayscale: float = Field(0.2, ge=0, le=1, description="probability of turning a view gray")

    @model_validator(mode="after")
    def _ranges(self) -> ViewsConfig:
        for name, (lo, hi), top in (("crop_scale", self.crop_scale, 1.0), ("crop_ratio", self.crop_ratio, None)):
            if not 0 < lo <= hi or (top is not None and hi > top):
                bound = f"0 < min <= max <= {top}" if top is not None else "0 < min <= max"
                raise ValueError(f"{name}: expected [min, max] with {bound}, got {[lo, hi]}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("crop_scale", "crop_ratio"):
                value = data.get(name)
                if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
                    raise ValueError(f"{name}: expected a [min, max] pair, got {value!r}")
        return data


class Views:
    """Two augmented views of one batch of images: ``first[i]`` and ``second[i]`` are views of image ``i``.

    What the loader yields in place of a tensor when an objective asks for views; ``len`` is the number of
    images (not of views)."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor):
        if first.shape != second.shape:
            raise DataError(f"the two views differ in shape: {tuple(first.shape)} and {tuple(second.shape)}")
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first)

    @property
    def device(self) -> torch.device:
        return self.first.device

    @property
    def shape(self) -> torch.Size:
        return self.first.shape

    def both(self) -> torch.Tensor:
        """The two views stacked, ``(2B, C, H, W)``: one forward pass sees both (one set of BatchNorm statistics)."""
        return torch.cat([self.first, self.second])

    def to(self, device: torch.device | str) -> Views:
        return Views(self.first.to(device), self.second.to(device))


class ViewLoader(TensorLoader):
    """A ``TensorLoader`` that yields two augmented views of every image (:class:`Views`) instead of one batch:
    the same shuffle, the same per-(seed, epoch) generator, the same share of the global batch per rank. The
    views' own crop and flip replace ``crop_padding`` and ``hflip``; ``prepare`` without a generator (a probe
    batch) still returns the one normalised batch."""

    def __init__(
        self, split: Split, batch_size: int, mean: torch.Tensor, std: torch.Tensor, *, views: ViewsConfig, **kw: Any
    ):
        if not isinstance(split.x, torch.Tensor) or split.x.dim() != 4:
            raise DataError(f"two augmented views need images (N, C, H, W), got inputs of shape {tuple(split.x.shape)}")
        super().__init__(split, batch_size, mean, std, **kw)
        self.views = views

    def __iter__(self) -> Iterator[tuple[Views, torch.Tensor | None]]:  # type: ignore[override]  # views, not one batch
        order, gen = self._draw_order()
        order = order.to(self.device)
        for i, (idx, lo) in enumerate(self._batches(order)):
            x = self.split.x[idx]
            assert not isinstance(x, NamedInputs)  # checked in __init__
            x = standard_layout(normalize(x, self.mean, self.std))
            yield (
                two_views(x, gen, self.views, self.mean, self.std, self.batch_len(i), lo),
                (None if self.split.y is None else self.split.y[idx]),
            )

    def prepare(self, x: Batch, gen: torch.Generator | None = None, draws: int | None = None, at: int = 0) -> Batch:
        if gen is not None:
            raise DataError("ViewLoader draws its views while iterating; prepare() only normalises a probe batch")
        return super().prepare(x)


def two_views(
    x: torch.Tensor,
    gen: torch.Generator,
    cfg: ViewsConfig,
    mean: torch.Tensor,
    std: torch.Tensor,
    draws: int | None = None,
    at: int = 0,
) -> Views:
    """Two views of the normalised images ``x`` (N, C, H, W); the random parameters are drawn for ``draws``
    images (the global batch, default ``len(x)``) and ``x`` takes those from ``at`` on."""
    if x.dim() != 4:
        raise DataError(f"two augmented views need images (N, C, H, W), got inputs of shape {tuple(x.shape)}")
    n = len(x) if draws is None else draws
    return Views(_view(x, gen, cfg, mean, std, n, at), _view(x, gen, cfg, mean, std, n, at))


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _view(
    x: torch.Tensor, gen: torch.Generator, cfg: ViewsConfig, mean: torch.Tensor, std: torch.Tensor, n: int, at: int
) -> torch.Tensor:
    """One view of every image: the draws for all ``n`` images are made (in a fixed order), ``x``'s are used."""
    mine = slice(at, at + len(x))
    area = _uniform(gen, n, *cfg.crop_scale)
    ratio = torch.exp(_uniform(gen, n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    ux, uy = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    flip = torch.rand(n, generator=gen) < cfg.hflip
    out = resized_crop(x, area[mine], ratio[mine], ux[mine], uy[mine], flip[mine])
    colour = _draw_colour(gen, cfg, n)
    if colour is None:
        return out
    return recolour(out, {k: v[mine] for k, v in colour.items()}, mean, std)


def resized_crop(
    x: torch.Tensor, area: torch.Tensor, ratio: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop ``area`` of each image at aspect ``ratio`` (sides clipped to the image), its position ``(ux, uy)`` in
    [0, 1] of the free room, flipped where ``flip``, resized back to the input size: one ``grid_sample``."""
    b = len(x)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop sides as shares of the image's
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (ux * (1 - w) + w / 2) * 2 - 1  # crop centre in grid_sample's [-1, 1] coordinates
    cy = (uy * (1 - h) + h / 2) * 2 - 1
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _draw_colour(gen: torch.Generator, cfg: ViewsConfig, n: int) -> dict[str, torch.Tensor] | None:
    """Per-image colour factors (neutral where an image is not jittered), or None when nothing changes colour."""
    j = cfg.jitter
    if j is None and cfg.grayscale == 0:
        return None
    if j is not None:
        on = torch.rand(n, generator=gen) < j.p
        factors = {
            "brightness": _uniform(gen, n, 1 - j.brightness, 1 + j.brightness),
            "contrast": _uniform(gen, n, 1 - j.contrast, 1 + j.contrast),
            "saturation": _uniform(gen, n, 1 - j.saturation, 1 + j.saturation),
            "hue": _uniform(gen, n, -j.hue, j.hue),
        }
        neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
        out = {k: torch.where(on, v, torch.full_like(v, neutral[k])) for k, v in factors.items()}
    else:
        out = {}
    out["gray"] = (torch.rand(n, generator=gen) < cfg.grayscale).float()
    return out


#: ITU-R 601 luma weights (what torchvision's rgb_to_grayscale uses)
LUMA = (0.299, 0.587, 0.114)


def _gray(px: torch.Tensor) -> torch.Tensor:
    r, g, b = px[:, 0:1], px[:, 1:2], px[:, 2:3]
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b


def recolour(x: torch.Tensor, f: dict[str, torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Apply per-image colour factors ``f`` to normalised images ``x`` (in pixel space, clipped to [0, 1])."""
    c = x.shape[1]
    m, s = mean.to(x.device).view(1, -1, 1, 1), std.to(x.device).view(1, -1, 1, 1)
    px = x * s + m

    def per(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    if "brightness" in f:
        px = (px * per(f["brightness"])).clamp(0, 1)
        gray_mean = (_gray(px) if c == 3 else px).mean(dim=(1, 2, 3), keepdim=True)
        px = ((px - gray_mean) * per(f["contrast"]) + gray_mean).clamp(0, 1)
        if c == 3:
            g = _gray(px)
            px = (g + (px - g) * per(f["saturation"])).clamp(0, 1)
            px = rotate_hue(px, per(f["hue"])).clamp(0, 1)
    if c == 3:
        gray = per(f["gray"])
        px = gray * _gray(px).expand_as(px) + (1 - gray) * px
    return (px - m) / s


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(px: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images by ``turns`` (a fraction of a full turn, per image) in YIQ space."""
    to_yiq = _RGB2YIQ.to(device=px.device, dtype=px.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, px)
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, 0:1], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)
