"""Attention heads of attention written by hand in user modules, cut whole.

Torch-Pruning's dependency graph follows a ``qkv`` Linear's outputs through the reshape / permute / select of a
hand-written attention into every op of it (and reports the output projection's inputs as the ``qkv``'s 3x
channels), so its channel group cannot be cut as channels. Here an attention is recognised from its Linears --
one fused ``qkv`` (``3 * heads * head_dim`` outputs, in the ``(3, heads, head_dim)`` layout of ViT / timm) or
three ``q`` / ``k`` / ``v`` -- and its output projection (the child Linear whose inputs are the attention's
width); its head count is read from an attribute (``num_heads``, ``heads``, ``n_head``, ...) or, when none has
one of those names, from the head split of a reshape in its traced forward, held by an attribute of another
name. A cut removes whole heads: their rows in each of q, k and v, their columns of the output projection, and
the head count attribute (and an attribute holding the attention's width, such as timm's ``attn_dim``) is
lowered to match. The head size is unchanged, so the softmax scale stays what it was.

A cut is checked against what it should compute (``prune.cut.checked_cut``): the model before the cut with the
removed heads' value rows set to zero (those heads then add exactly nothing to the projection). A forward that
does not agree -- a head count written in the code, a reshape by the input's width, heads that mix -- is a cut
that does not fit the forward, and the cutter rolls it back and names it. An attention whose head count cannot
be read is never cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

#: attribute names that hold an attention's head count
COUNT_NAMES = ("num_heads", "n_heads", "heads", "n_head", "nhead", "num_attention_heads", "nheads")
#: attribute names that may hold an attention's width (heads * head_dim), lowered with the heads
WIDTH_NAMES = ("attn_dim", "inner_dim", "all_head_size", "inner_size", "attention_dim")
_FUSED = re.compile(r"(^|_)(qkv|wqkv|to_qkv|in_proj|c_attn)(_|$)", re.IGNORECASE)
_PARTS = {
    "q": re.compile(r"^(q|query|q_proj|to_q|wq|q_lin)$", re.IGNORECASE),
    "k": re.compile(r"^(k|key|k_proj|to_k|wk|k_lin)$", re.IGNORECASE),
    "v": re.compile(r"^(v|value|v_proj|to_v|wv|v_lin)$", re.IGNORECASE),
}


@dataclass
class Attention:
    """A hand-written attention: its Linears, head count and head size, and the attributes a cut updates; or,
    in ``why``, why it must stay whole."""

    name: str  # module path ('' for the model itself)
    qkv: list[str]  # one fused Linear, or q, k, v
    proj: str
    heads: int
    head_dim: int
    count: str | None = None  # the attribute holding the head count
    widths: list[str] = field(default_factory=list)  # attributes holding heads * head_dim
    why: str | None = None

    @property
    def root(self) -> str:
        return self.qkv[0]

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def fused(self) -> bool:
        return len(self.qkv) == 1

    @property
    def scores(self) -> str:
        """The planner's name of ``q @ k^T`` (a Linear of ``width`` inputs and one output per token)."""
        return f"{self.name}:scores"

    @property
    def mix(self) -> str:
        """The planner's name of ``softmax(...) @ v`` (a Linear of one input per token and ``width`` outputs)."""
        return f"{self.name}:mix"


def _child_linears(module: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Linears directly under ``module`` or one container below it (``to_out = Sequential(Linear, Dropout)``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            yield name, child
        elif isinstance(child, (nn.Sequential, nn.ModuleList)):
            for sub, m in child.named_children():
                if isinstance(m, nn.Linear):
                    yield f"{name}.{sub}", m


def _split(module: nn.Module) -> tuple[list[str], int, str] | None:
    """(the q/k/v Linears, the attention's width, the output projection) of ``module``, or None."""
    linears = dict(_child_linears(module))
    fused = [n for n, m in linears.items() if _FUSED.search(n.rpartition(".")[2]) and m.out_features % 3 == 0]
    parts = {p: [n for n in linears if rx.match(n.rpartition(".")[2])] for p, rx in _PARTS.items()}
    if len(fused) == 1:
        qkv, width = fused, linears[fused[0]].out_features // 3
    elif all(len(v) == 1 for v in parts.values()):
        qkv = [parts[p][0] for p in "qkv"]
        sizes = {(linears[n].in_features, linears[n].out_features) for n in qkv}
        if len(sizes) != 1:
            return None  # grouped-query / cross attention: not this layout
        width = linears[qkv[0]].out_features
    else:
        return None
    projs = [n for n, m in linears.items() if n not in qkv and m.in_features == width]
    return (qkv, width, projs[0]) if len(projs) == 1 else None


def _graph_heads(module: nn.Module, width: int, fused: bool) -> int | None:
    """The head count of the head split in ``module``'s traced forward: a reshape / view to ``(..., heads,
    head_dim)`` with ``heads * head_dim == width``, or to ``(..., 3, heads, -1)`` (fused) / ``(..., heads, -1)``;
    None when it does not trace or has no such split."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - fx raises anything on a forward it cannot trace
        return None
    for node in graph.nodes:
        if node.target not in ("reshape", "view", torch.reshape):
            continue
        args = list(node.args[1:])
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = list(args[0])
        ints = [a if isinstance(a, int) and not isinstance(a, bool) else None for a in args]
        for a, b in reversed(list(zip(ints, ints[1:], strict=False))):
            if a is not None and b is not None and a > 1 and a * b == width:
                return a
        tail = ints[-3:] if fused else ints[-2:]  # (..., 3, heads, -1) or (..., heads, -1)
        h = tail[-2] if len(tail) >= 2 and tail[-1] == -1 and (not fused or tail[:1] == [3]) else None
        if h is not None and h > 1 and width % h == 0:
            return h
    return None


def _read(module: nn.Module, name: str, qkv: list[str], width: int, proj: str) -> Attention:
    ints = {k: v for k, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool)}
    count = next((k for k in COUNT_NAMES if ints.get(k, 0) >= 1 and width % ints[k] == 0), None)  # (1 once cut)
    heads = ints[count] if count else _graph_heads(module, width, len(qkv) == 1)
    if heads is None:
        why = "its head count cannot be read (no num_heads / heads / n_head attribute, no head split in its forward)"
        return Attention(name, qkv, proj, 1, width, why=why)
    if count is None:
        count = next((k for k, v in ints.items() if v == heads), None)
    att = Attention(name, qkv, proj, heads, width // heads, count)
    att.widths = [k for k in WIDTH_NAMES if ints.get(k) == width]
    if count is None:
        att.why = f"its forward splits {heads} heads by a number written in its code, not held by an attribute"
    return att


def find_attentions(model: nn.Module) -> list[Attention]:
    """Every hand-written attention of ``model`` (the outermost module holding the q/k/v and output Linears)."""
    found: list[Attention] = []
    for name, module in model.named_modules():
        if any(name.startswith(a.name + ".") for a in found if a.name):
            continue
        split = _split(module)
        if split is not None:
            qkv, width, proj = split
            prefix = f"{name}." if name else ""
            found.append(_read(module, name, [prefix + n for n in qkv], width, prefix + proj))
    return found


@dataclass
class HeadCut:
    """Whole heads removed from one attention (the indices of its heads at the time of the cut); replayable from
    its dict (a :class:`prune.history.ChannelsOp`'s ``heads``)."""

    attention: str
    qkv: list[str]
    proj: str
    count: str
    heads: int  # before the cut
    head_dim: int
    removed: list[int]
    widths: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, att: Attention, removed: list[int]) -> HeadCut:
        assert att.count is not None and att.why is None
        return cls(att.name, att.qkv, att.proj, att.count, att.heads, att.head_dim, sorted(removed), att.widths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kept_channels(self) -> list[int]:
        gone = set(self.removed)
        d = self.head_dim
        return [h * d + i for h in range(self.heads) if h not in gone for i in range(d)]

    # -- what the cutter reads (``prune.cut.Cut``) ---------------------------------------------------------
    @property
    def layer(self) -> str:
        return self.qkv[0]

    noun = "heads"

    def what(self) -> str:
        return f"heads {self.removed} of the {self.heads} of the attention `{self.attention}`"

    def touched(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(n) for n in (self.attention, *self.qkv, self.proj)]

    def silenced(self, model: nn.Module) -> list[tuple[torch.Tensor, list[int]]]:
        """The value Linear's weight and bias rows of the removed heads."""
        d = self.head_dim
        rows = [h * d + i for h in self.removed for i in range(d)]
        name = self.qkv[0] if len(self.qkv) == 1 else self.qkv[2]
        if len(self.qkv) == 1:
            rows = [2 * self.heads * d + r for r in rows]
        v = model.get_submodule(name)
        assert isinstance(v, nn.Linear)
        return [(t, rows) for t in (v.weight, v.bias) if t is not None]

    def apply(self, model: nn.Module) -> None:
        """Remove the heads (rows of q, k, v; columns of the projection) and lower the attributes."""
        keep = self.kept_channels()
        width = self.heads * self.head_dim
        for name in self.qkv:
            rows = [s * width + c for s in range(3) for c in keep] if len(self.qkv) == 1 else keep
            _keep_rows(model.get_submodule(name), rows)
        _keep_columns(model.get_submodule(self.proj), keep)
        owner = model.get_submodule(self.attention)
        setattr(owner, self.count, self.heads - len(self.removed))
        for attr in self.widths:
            setattr(owner, attr, len(keep))

    def channels_removed(self) -> dict[str, int]:
        """Output channels removed per Linear."""
        n = len(self.removed) * self.head_dim
        return {name: n * (3 if len(self.qkv) == 1 else 1) for name in self.qkv}


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.clone().contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def _keep_rows(layer: nn.Module, rows: list[int]) -> None:
    assert isinstance(layer, nn.Linear)
    idx = torch.as_tensor(rows, dtype=torch.long, device=layer.weight.device)
    grad = layer.weight.grad
    layer.weight = _param(layer.weight[idx], layer.weight)
    layer.weight.grad = None if grad is None else grad[idx].clone()
    if layer.bias is not None:
        bgrad = layer.bias.grad
        layer.bias = _param(layer.bias[idx], layer.bias)
        layer.bias.grad = None if bgrad is None else bgrad[idx].clone()
    layer.out_features = len(rows)


@torch.no_grad()
def _keep_columns(layer: nn.Module, cols: list[int]) -> None:
    assert isinstance(layer, nn.Linear)
    idx = torch.as_tensor(cols, dtype=torch.long, device=layer.weight.device)
    grad = layer.weight.grad
    layer.weight = _param(layer.weight[:, idx], layer.weight)
    layer.weight.grad = None if grad is None else grad[:, idx].clone()
    layer.in_features = len(cols)
