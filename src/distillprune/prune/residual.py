"""Finding residual branches ``y = x + f(x)`` in any model's graph (torch.fx), for depth pruning.

Each module with children is traced one level deep (its children stay calls), so a block's own ``forward``
is read the way it is written, whatever its class is called:

* **the module is the residual** -- its output is ``x + f(x)`` on its own input ``x`` (maybe through an
  ``nn.Identity`` shortcut, maybe followed by an activation): torchvision/timm ResNet basic blocks,
  MobileNetV2/EfficientNet inverted residuals, ConvNeXt blocks. Removing it replaces the module by the
  identity.
* **the add is in the parent's forward** -- ``y = s + c_k(...c_1(s))`` where ``c_1..c_k`` are children called
  only there (a transformer block's ``x + mlp(norm2(x))``, a hand-written net's ``x + self.block(x)``).
  Removing it makes that branch output zeros (``c_1`` becomes :class:`ZeroBranch`, the others the
  identity), so ``y = s``; the branch is named by its largest child.

A module fx cannot trace (data-dependent control flow) is skipped and named in :func:`find_residuals`'s
notes; a block class that marks itself ``removable`` (or a ``BasicBlock``/``Bottleneck`` with
``downsample=None``) is still found without tracing.
"""

from __future__ import annotations

import operator
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

_ADDS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
# what may follow the add and still make ``module(x)`` "x after the block" (activations, no-ops)
_AFTER = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout)
_AFTER_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.hardswish,
    torch.nn.functional.leaky_relu,
}
_AFTER_METHODS = {"relu", "relu_", "contiguous"}
_LAYOUT_METHODS = {"transpose", "permute", "contiguous", "mul", "mul_", "gelu"}


class ZeroBranch(nn.Module):
    """A removed residual branch: zeros shaped like its input (so ``s + branch(s)`` is ``s``)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.zeros_like(x)


@dataclass
class Residual:
    path: str  # the block (kind "module") or the branch's largest child (kind "branch")
    kind: str  # "module": replace by the identity; "branch": zero the branch ``chain``
    chain: list[str] = field(default_factory=list)  # branch: the children called from s to the add, in order


class _OneLevel(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True  # every child stays one call


def _trace(module: nn.Module) -> fx.Graph:
    was = module.training
    module.eval()  # drop-path / dropout take their inference branch
    try:
        return _OneLevel().trace(module)
    finally:
        module.train(was)


def _is_add(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in _ADD_METHODS)


def _passthrough(n: fx.Node, module: nn.Module, kinds: tuple[type, ...]) -> bool:
    if n.op == "call_module":
        return isinstance(module.get_submodule(str(n.target)), kinds)
    if n.op == "call_function":
        return n.target in _AFTER_FUNCTIONS
    return n.op == "call_method" and n.target in _AFTER_METHODS


def _strip(n: object, module: nn.Module) -> object:
    """Skip ``nn.Identity`` calls (a shortcut that is the identity)."""
    while (
        isinstance(n, fx.Node)
        and n.op == "call_module"
        and isinstance(module.get_submodule(str(n.target)), nn.Identity)
    ):
        n = n.args[0]
    return n


def _ancestors(n: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [n]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def _is_module_residual(graph: fx.Graph, module: nn.Module) -> bool:
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    out = next(n for n in graph.nodes if n.op == "output")
    if len(inputs) != 1 or not isinstance(out.args[0], fx.Node):
        return False
    n = out.args[0]
    while not _is_add(n) and _passthrough(n, module, _AFTER) and n.args and isinstance(n.args[0], fx.Node):
        n = n.args[0]
    if not _is_add(n) or len(n.args) < 2:
        return False
    a, b = (_strip(x, module) for x in n.args[:2])
    x = inputs[0]
    return (a is x and isinstance(b, fx.Node) and x in _ancestors(b)) or (
        b is x and isinstance(a, fx.Node) and x in _ancestors(a)
    )


def _on_branch(n: fx.Node) -> fx.Node | None:
    """The one input of ``n`` that carries the branch (others may be parameters or constants), or None."""
    tensors = [a for a in n.all_input_nodes if a.op != "get_attr"]
    return tensors[0] if len(tensors) == 1 else None


def _zero_preserving(n: fx.Node, module: nn.Module) -> bool:
    """Ops that map a zero branch to zeros (activations, layout changes, scaling by a parameter)."""
    if _passthrough(n, module, ()):
        return True
    if n.op == "call_method":
        return n.target in _LAYOUT_METHODS
    return n.op == "call_function" and n.target in (operator.mul, torch.mul, torch.transpose, torch.permute)


def _branch_chain(add: fx.Node, module: nn.Module) -> list[str] | None:
    """Children ``c_1..c_k`` with ``add = s + c_k(...c_1(s))``, each called once, or None."""
    a, b = add.args[0], add.args[1]
    for s, o in ((a, b), (b, a)):
        if not isinstance(s, fx.Node) or not isinstance(o, fx.Node):
            continue
        chain: list[str] = []
        n: fx.Node | None = o
        while n is not None and n is not s:
            prev = _on_branch(n)
            if len(n.users) != 1 or prev is None:
                break
            if n.op == "call_module":
                chain.append(str(n.target))
            elif not _zero_preserving(n, module):
                break
            n = prev
        if n is s and chain:
            return chain[::-1]
    return None


def _size(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


_CACHE: OrderedDict[str, tuple[list[Residual], list[str]]] = OrderedDict()


def _key(model: nn.Module) -> str:
    # the architecture as text: every module's path, class and constructor arguments (a deep copy of a model,
    # as the plan search makes for each candidate, has the same key)
    classes = ";".join(f"{n}:{type(m).__module__}.{type(m).__qualname__}" for n, m in model.named_modules())
    return classes + "\n" + repr(model)


def find_residuals(model: nn.Module) -> tuple[list[Residual], list[str]]:
    """The removable residual branches of ``model`` in module order, and notes on what could not be read."""
    key = _key(model)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        found, notes = _CACHE[key]
        return [Residual(r.path, r.kind, list(r.chain)) for r in found], list(notes)
    result = _find(model)
    _CACHE[key] = result
    if len(_CACHE) > 16:
        _CACHE.popitem(last=False)
    return [Residual(r.path, r.kind, list(r.chain)) for r in result[0]], list(result[1])


def _find(model: nn.Module) -> tuple[list[Residual], list[str]]:
    found: list[Residual] = []
    notes: list[str] = []
    module_blocks: set[str] = set()
    for name, m in model.named_modules():
        if name and _marked(m):  # the block says so (or is a torchvision-style block): no tracing needed
            found.append(Residual(name, "module"))
            module_blocks.add(name)
            continue
        if not any(True for _ in m.children()) or isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue
        graph = traced(m, name, notes)
        if graph is None:
            continue
        if name and _is_module_residual(graph, m):
            found.append(Residual(name, "module"))
            module_blocks.add(name)
            continue
        calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
        for n in graph.nodes:
            if not _is_add(n) or len(n.args) < 2:
                continue
            chain = _branch_chain(n, m)
            if not chain or any(calls[c] > 1 for c in chain):
                continue  # a layer the forward calls again elsewhere: zeroing it would change the other call too
            full = [f"{name}.{c}" if name else c for c in chain]
            if any(isinstance(model.get_submodule(p), ZeroBranch) for p in full):
                continue  # already removed
            if len(full) == 1 and full[0] in module_blocks:
                continue
            biggest = max(full, key=lambda p: _size(model.get_submodule(p)))
            found.append(Residual(biggest, "branch", full))
    # a branch child that is itself a residual module: the module entry already covers it
    found = [r for r in found if not (r.kind == "branch" and r.path in module_blocks and len(r.chain) == 1)]
    return _outermost(found), notes


def traced(m: nn.Module, name: str, notes: list[str]) -> fx.Graph | None:
    try:
        return _trace(m)
    except Exception as e:  # noqa: BLE001 - fx raises many types on untraceable code
        first = str(e).splitlines()[0][:80] if str(e) else ""
        notes.append(f"`{name or type(m).__name__}` not traceable by torch.fx ({type(e).__name__}: {first})")
        return None


def residual_at(model: nn.Module, path: str) -> Residual | None:
    """The residual that ``path`` names (a block, or a branch child in its parent's forward), or None."""
    m = model.get_submodule(path)
    if _marked(m):
        return Residual(path, "module")
    notes: list[str] = []
    if any(True for _ in m.children()) and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        graph = traced(m, path, notes)
        if graph is not None and _is_module_residual(graph, m):
            return Residual(path, "module")
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    graph = traced(parent, parent_path, notes)
    if graph is None:
        return None
    for n in graph.nodes:
        if _is_add(n) and len(n.args) >= 2:
            chain = _branch_chain(n, parent)
            if chain and child in chain:
                return Residual(path, "branch", [f"{parent_path}.{c}" if parent_path else c for c in chain])
    return None


def _marked(m: nn.Module) -> bool:
    if getattr(m, "removable", False) is True:
        return True
    return type(m).__name__ in ("BasicBlock", "Bottleneck") and getattr(m, "downsample", 1) is None


def _outermost(found: list[Residual]) -> list[Residual]:
    """Drop residuals inside another one's removed part (removing the outer one removes them)."""
    removed = [r.path for r in found if r.kind == "module"] + [c for r in found if r.kind == "branch" for c in r.chain]

    def inside(p: str) -> bool:
        return any(p.startswith(q + ".") for q in removed)

    return [r for r in found if not inside(r.path)]
