"""Calibration rows of one layer: its input as the pruned model sees it, its output as the dense model makes it.

A forward pass stops as soon as everything it was asked for is captured (the layers after it are never run),
so re-fitting layers one by one in forward order costs about half a forward per layer and model. A conv's
rows are im2col patches (``F.unfold``) at output positions sampled per image (seeded), so a calibration set of
a thousand images bounds the Gram matrix's cost whatever the resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Captured(Exception):
    """Raised by a hook once every requested tensor is captured: the rest of the forward is skipped."""


@torch.no_grad()
def capture(
    model: nn.Module, x: Tensor, inputs: Sequence[str] = (), outputs: Sequence[str] = (), stop: bool = True
) -> dict[str, Tensor]:
    """Run ``model(x)`` until (``stop``) the first input of each module in ``inputs`` and the output of each
    module in ``outputs`` are captured; keys are ``"in:" + path`` and ``"out:" + path``."""
    want = {f"in:{p}" for p in inputs} | {f"out:{p}" for p in outputs}
    got: dict[str, Tensor] = {}
    handles = []

    def store(key: str, value: Tensor) -> None:
        got.setdefault(key, value.detach())
        if stop and want <= got.keys():
            raise _Captured

    for p in inputs:
        handles.append(model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: store(f"in:{p}", a[0])))
    for p in outputs:
        handles.append(model.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: store(f"out:{p}", o)))
    was = model.training
    model.eval()
    try:
        model(x)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    missing = want - got.keys()
    if missing:
        raise RuntimeError(f"modules not called in the forward: {sorted(missing)}")
    return got


def positions(n: int, length: int, per_image: int, gen: torch.Generator) -> Tensor:
    """(n, k) output positions per image, ``k = min(per_image, length)``, drawn without replacement."""
    if per_image >= length:
        return torch.arange(length).expand(n, length)
    return torch.rand(n, length, generator=gen).argsort(dim=1)[:, :per_image]


def conv_rows(conv: nn.Conv2d, x: Tensor, pos: Tensor) -> Tensor:
    """im2col rows of ``conv``'s input ``x`` at flattened output positions ``pos`` (n, k): (n * k, cin * kh *
    kw), in the layout of ``conv.weight.reshape(cout, -1)`` (``F.unfold``'s, gathered only where sampled:
    unfolding the whole map first costs far more than the solve)."""
    assert not isinstance(conv.padding, str)  # lstsq.why_not skips string paddings
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    hp, wp = xp.shape[2], xp.shape[3]
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    pos = pos.to(x.device)
    oy, ox = pos // ow, pos % ow  # (n, k)
    ky = torch.arange(kh, device=x.device).repeat_interleave(kw) * dh  # (kh * kw,), row-major over the kernel
    kx = torch.arange(kw, device=x.device).repeat(kh) * dw
    flat = (oy[..., None] * sh + ky) * wp + (ox[..., None] * sw + kx)  # (n, k, kh * kw)
    n, c = x.shape[0], x.shape[1]
    idx = flat.reshape(n, 1, -1).expand(n, c, -1)
    patches = xp.reshape(n, c, hp * wp).gather(2, idx).reshape(n, c, pos.shape[1], kh * kw)
    return patches.permute(0, 2, 1, 3).reshape(n * pos.shape[1], c * kh * kw)


def map_rows(y: Tensor, pos: Tensor) -> Tensor:
    """A (n, c, h, w) map's values at flattened positions ``pos`` (n, k): (n * k, c)."""
    flat = y.flatten(2)
    idx = pos.to(flat.device).unsqueeze(1).expand(-1, flat.shape[1], -1)
    return flat.gather(2, idx).transpose(1, 2).reshape(-1, flat.shape[1])


def token_rows(t: Tensor, pos: Tensor | None) -> Tensor:
    """A Linear's (..., features) input or output as rows; ``pos`` (n, k) samples the tokens of each input."""
    if t.dim() <= 2 or pos is None:
        return t.reshape(-1, t.shape[-1])
    flat = t.reshape(t.shape[0], -1, t.shape[-1])
    idx = pos.to(flat.device).unsqueeze(2).expand(-1, -1, flat.shape[2])
    return flat.gather(1, idx).reshape(-1, flat.shape[2])


LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def execution_order(model: nn.Module, x: Tensor, kinds: tuple[type[nn.Module], ...] = LAYERS) -> list[str]:
    """Paths of the ``kinds`` modules in the order one forward calls them (each once, first call)."""
    order: list[str] = []

    def seen(n: str) -> None:
        if n not in order:
            order.append(n)

    handles = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen(n))
        for n, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return order
