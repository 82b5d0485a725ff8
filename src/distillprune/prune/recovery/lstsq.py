"""Layer-wise least-squares reconstruction (He et al. 2017, ThiNet): after a cut, re-solve each Conv2d/Linear
so that, on calibration inputs, its output matches the dense model's output at the same module.

* Forward order, the pruned model's own inputs: layer ``k`` is solved on what the already re-fit layers
  before it now produce, so errors do not accumulate down the network.
* A conv is an im2col regression (``capture.conv_rows``) over output positions sampled per image.
* BatchNorm is kept, not folded: the target is the dense conv's *pre-BN* output on the kept channels. The
  least-squares problem separates by output channel, and an eval-mode BN is a per-channel affine map, so
  matching the pre-BN output is matching the post-BN output channel by channel; keeping the BN keeps the
  architecture, its history ops and the later BatchNorm re-estimation untouched. A bias-free conv gets no
  intercept: the BN after it absorbs any shift, and its re-estimation after recovery sets it.
* Residual stream (``stream``): the last layer of a surviving identity-shortcut block ``y = f(x) + x`` with
  ``f`` ending in ``conv -> bn`` is fitted to ``z_d + (x_d - x_p) / a`` (``a``: the BN's scale), so the
  block's output ``bn(z) + x_p`` matches the dense ``bn(z_d) + x_d``: the block absorbs what a removed block
  upstream, or an earlier error in the stream, took away. A block with a projection shortcut
  ``y = f(x) + s(x)`` (a downsampling block) is fitted the same way with ``s``'s outputs in place of ``x``,
  after ``s`` itself is re-fit (``targets.layer_targets`` orders it so).
* A solve is accepted only if it lowers the layer's calibration error; otherwise the old weights stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distillprune.prune.recovery.capture import capture, conv_rows, map_rows, positions, token_rows
from distillprune.prune.recovery.channels import kept_channels
from distillprune.prune.recovery.relu import ReluAfter, bn_affine, bn_scale, gated_targets, relu_error
from distillprune.prune.recovery.report import LayerRecovery
from distillprune.prune.recovery.solve import Gram, ridge_solve


@dataclass
class Stream:
    """The residual block whose output layer ``path`` feeds, the BN between them, and the block's other addend:
    its input (an identity shortcut, ``shortcut`` None) or the output of its projection ``shortcut``."""

    block: str
    bn: nn.modules.batchnorm._BatchNorm
    shortcut: str | None = None

    def key(self) -> str:
        """The capture key of the other addend."""
        return f"in:{self.block}" if self.shortcut is None else f"out:{self.shortcut}"

    def request(self) -> tuple[list[str], list[str]]:
        """``capture``'s (inputs, outputs) for the other addend."""
        return ([self.block], []) if self.shortcut is None else ([], [self.shortcut])


@dataclass
class Target:
    """One layer to re-fit: its path, the dense output channels it kept, and its residual stream, if any."""

    path: str
    out: Tensor
    stream: Stream | None = None
    relu: ReluAfter | None = None  # a ReLU follows (relu.ReluAfter): the target is gated by it


def why_not(m: nn.Module, m0: nn.Module) -> str | None:
    """Why layer ``m`` (dense counterpart ``m0``) cannot be re-fit, or None."""
    if type(m) is not type(m0):
        return f"a {type(m0).__name__} in the dense model, a {type(m).__name__} here"
    if isinstance(m, nn.Conv2d):
        if m.groups != 1:
            return f"grouped/depthwise convolution (groups={m.groups}): a per-group solve is not implemented"
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return f"padding {m.padding!r} / {m.padding_mode}: im2col rows assume explicit zero padding"
    return None


Layer = nn.Conv2d | nn.Linear


def unknowns(m: Layer) -> int:
    return int(m.weight[0].numel()) + int(m.bias is not None)


def as_matrix(m: Layer) -> Tensor:
    """The layer's weights (and bias, as a last row) in the ``X @ W`` layout of its calibration rows."""
    w = m.weight.detach().reshape(m.weight.shape[0], -1).T
    if m.bias is not None:
        w = torch.cat([w, m.bias.detach()[None]], 0)
    return w.to(torch.float64).cpu()


@torch.no_grad()
def set_matrix(m: Layer, w: Tensor) -> None:
    k = m.weight[0].numel()
    m.weight.copy_(w[:k].T.reshape(m.weight.shape).to(m.weight))
    if m.bias is not None:
        m.bias.copy_(w[k].to(m.bias))


def _positions(y: Tensor, per_image: int, gen: torch.Generator) -> Tensor | None:
    if y.dim() == 4:  # a conv's output map
        return positions(y.shape[0], y.shape[2] * y.shape[3], per_image, gen)
    return None if y.dim() <= 2 else positions(y.shape[0], y[0].numel() // y.shape[-1], per_image, gen)


def _at(t: Tensor, pos: Tensor | None) -> Tensor:
    return map_rows(t, pos) if t.dim() == 4 and pos is not None else token_rows(t, pos)


@torch.no_grad()
def dense_rows(
    dense: nn.Module, targets: Sequence[Target], batches: Sequence[Tensor], per_image: int, seed: int
) -> list[list[tuple[Tensor | None, Tensor]]]:
    """For every target and batch, the sampled positions and the dense target rows, from one dense forward
    per batch (the dense model is the larger one: it is run once, not once per layer). A stream target's rows
    already hold the dense half of its correction, ``z_d + x_d / a``."""
    rows: list[list[tuple[Tensor | None, Tensor]]] = [[] for _ in targets]
    # a Linear's features are its last dimension (tokens: B, L, D); a conv's channels its second
    last = [isinstance(dense.get_submodule(t.path), nn.Linear) for t in targets]
    streams = [t.stream.request() for t in targets if t.stream is not None]
    ins = [p for i, _ in streams for p in i]
    outs = [t.path for t in targets] + [p for _, o in streams for p in o]
    for b, x in enumerate(batches):
        got = capture(dense, x, inputs=ins, outputs=outs, stop=False)
        for i, t in enumerate(targets):
            y = _channels(got[f"out:{t.path}"], t.out, last[i])
            pos = _positions(y, per_image, torch.Generator().manual_seed(seed * 1_000_003 + i * 7919 + b))
            if t.stream is not None:
                y = y + _channels(got[t.stream.key()], t.out, last[i]) / _scale(t.stream.bn, y)
            rows[i].append((pos, _at(y, pos)))
    return rows


def _channels(y: Tensor, idx: Tensor, last: bool) -> Tensor:
    return y[..., idx] if last else y[:, idx]


def _scale(bn: nn.modules.batchnorm._BatchNorm, like: Tensor) -> Tensor:
    return bn_scale(bn).to(like).reshape((1, -1) + (1,) * (like.dim() - 2))


def refit(
    pruned: nn.Module, t: Target, batches: Sequence[Tensor], rows: Sequence[tuple[Tensor | None, Tensor]], damp: float
) -> LayerRecovery:
    """Re-solve the layer ``t.path`` of ``pruned`` against the dense ``rows`` (see ``dense_rows``) on the
    pruned model's own inputs; returns what happened."""
    m = pruned.get_submodule(t.path)
    assert isinstance(m, (nn.Conv2d, nn.Linear))  # layer_targets chose it
    gram = Gram(unknowns(m) - int(m.bias is not None), len(t.out), bias=m.bias is not None, products=torch.float32)
    gate = _Gate(pruned, t) if t.relu is not None else None
    for x, (pos, y) in zip(batches, rows, strict=True):
        ins, outs = t.stream.request() if t.stream else ([], [])
        cp = capture(pruned, x, inputs=[t.path, *ins], outputs=outs)
        xin = cp[f"in:{t.path}"]
        shift = None
        if t.stream is not None:  # the pruned half of the stream correction: - x_p / a
            xp = cp[t.stream.key()]
            shift = _at(xp / _scale(t.stream.bn, xp), pos)
            y = y - shift
        xrows = conv_rows(m, xin, pos) if isinstance(m, nn.Conv2d) and pos is not None else _at(xin, pos)
        gram.add(xrows, y)
        if gate is not None:
            gate.add(xrows, y, shift)
    old = as_matrix(m)
    rec = _accept(m, t, gram, damp)
    if gate is not None and rec.after is not None and gram.rows >= unknowns(m):
        gate.refine(m, rec, gram, old, damp)
    return rec


class _Gate:
    """The ReLU-aware second solve of one layer (``relu``): the rows, kept for it, and the thresholds."""

    def __init__(self, pruned: nn.Module, t: Target) -> None:
        assert t.relu is not None
        bn = pruned.get_submodule(t.relu.bn)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        a, b = bn_affine(bn)
        self.a, self.theta0 = a.float(), (-b / a).float()
        self.rows: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, x: Tensor, y: Tensor, shift: Tensor | None) -> None:
        theta = self.theta0.to(y) - (shift if shift is not None else 0.0)  # where a * z + b + other = 0
        self.rows.append((x.detach().float().cpu(), y.detach().float().cpu(), theta.expand_as(y).cpu()))

    def error(self, w: Tensor, bias: bool) -> float:
        return sum(relu_error(_apply(x, w, bias), y, th, self.a) for x, y, th in self.rows)

    def refine(self, m: Layer, rec: LayerRecovery, gram: Gram, old: Tensor, damp: float, rounds: int = 3) -> None:
        """Solve again on targets gated by the current fit, up to ``rounds`` times while the error after the
        ReLU falls; keep whichever of (old, plain, gated) errs least there."""
        bias = m.bias is not None
        plain = as_matrix(m)
        errs = {"old": self.error(old, bias), "plain": self.error(plain, bias)}
        best_w, best = plain, errs["plain"]
        for _ in range(rounds):
            xty = torch.zeros_like(gram.xty)
            for x, y, th in self.rows:
                target = gated_targets(y, _apply(x, best_w, bias), th, self.a)
                xty += (_design(x, bias).T @ target).double()
            w = ridge_solve(gram.xtx, xty, damp)
            e = self.error(w, bias) if bool(torch.isfinite(w).all()) else float("inf")
            if e >= best:
                break
            best_w, best = w, e
        energy = sum(float((self.a * (y - th)).clamp_min(0).pow(2).sum()) for _, y, th in self.rows)
        rec.gated = best < errs["plain"]
        rec.before, rec.after = errs["old"] / max(energy, 1e-30), min(best, errs["old"]) / max(energy, 1e-30)
        if errs["old"] <= best:
            set_matrix(m, old)
            rec.accepted, rec.gated = False, False
            rec.skipped = "no solve lowers the error after the ReLU"
        else:
            set_matrix(m, best_w)
            rec.accepted, rec.skipped = True, None


def _design(x: Tensor, bias: bool) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1) if bias else x


def _apply(x: Tensor, w: Tensor, bias: bool) -> Tensor:
    return _design(x, bias) @ w.to(x.dtype)


def _accept(m: Layer, t: Target, gram: Gram, damp: float) -> LayerRecovery:
    """Solve; keep the solution only if it lowers the layer's calibration error."""
    rec = LayerRecovery(t.path, rows=gram.rows)
    energy = float(gram.yty) / max(gram.rows, 1)
    rec.before = gram.residual(as_matrix(m)) / max(energy, 1e-30)
    if gram.rows < unknowns(m):
        rec.skipped = f"ill-posed: {gram.rows} calibration rows for {unknowns(m)} unknowns per output"
        return rec
    if rec.before < 1e-10:
        rec.skipped = "already matches the dense output"
        return rec
    w = gram.solve(damp)
    if not bool(torch.isfinite(w).all()):
        rec.skipped = "the solve is not finite"
        return rec
    rec.after = gram.residual(w) / max(energy, 1e-30)
    if rec.after >= rec.before:
        rec.skipped = f"the solve does not lower the calibration error ({rec.after:.4g} >= {rec.before:.4g})"
        rec.after = rec.before
        return rec
    set_matrix(m, w)
    rec.accepted = True
    return rec


def _w(m: nn.Module) -> Tensor:
    w = m.weight
    assert isinstance(w, Tensor)
    return w


def out_channels(m: nn.Module, m0: nn.Module) -> Tensor | None:
    """The dense output channels layer ``m`` kept (``channels.kept_channels``)."""
    found = kept_channels(_w(m0), _w(m))
    return None if found is None else found[0]
