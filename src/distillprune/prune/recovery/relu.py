"""ReLU-aware targets: a layer followed by ``BN -> ReLU`` (or ``BN -> + shortcut -> ReLU``) only has to match
the dense output where the ReLU lets it through.

Plain least squares spends the layer's few free parameters on matching large negative pre-activations that
the ReLU turns into zeros anyway. With the BN's affine map ``post = a * z + b`` (eval statistics, kept dense)
and, for a residual stream, the other addend, every row has a threshold ``theta`` in the layer's own output
units where the ReLU opens. After the plain solve ``z_f``, rows the dense model leaves closed
(``a * (y - theta) <= 0``) get the target ``z_f`` when the fit is closed too (no error to fix there) and
``theta`` otherwise (just closed); open rows keep ``y``. One more solve on the same inputs (only the targets
change, so the Gram matrix is reused), and the solution kept is the one with the lowest error *after* the
ReLU -- the old weights, the plain solve, or this one.

Which layers qualify is read from the whole model's torch.fx graph; a model fx cannot trace keeps plain
targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from distillprune.prune.residual import _ADDS

_RELUS = {torch.relu, F.relu, torch.relu_}


@dataclass
class ReluAfter:
    """The BN between a layer and its ReLU; ``stream``: a residual add sits between the BN and the ReLU."""

    bn: str
    stream: bool


def _is_relu(n: fx.Node, gm: fx.GraphModule) -> bool:
    if n.op == "call_function":
        return n.target in _RELUS
    if n.op == "call_method":
        return n.target in ("relu", "relu_")
    return n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.ReLU)


def _only_user(n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def relu_layers(model: nn.Module) -> dict[str, ReluAfter]:
    """``layer path -> ReluAfter`` for every Conv2d/Linear whose only use is ``BN -> ReLU`` or
    ``BN -> add -> ReLU``; empty when fx cannot trace the model."""
    was = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 -- fx raises many types on untraceable control flow: plain targets
        return {}
    finally:
        model.train(was)
    found: dict[str, ReluAfter] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(gm.get_submodule(str(n.target)), (nn.Conv2d, nn.Linear)):
            continue
        bn = _only_user(n)
        if bn is None or bn.op != "call_module":
            continue
        if not isinstance(gm.get_submodule(str(bn.target)), nn.modules.batchnorm._BatchNorm):
            continue
        after = _only_user(bn)
        if after is None:
            continue
        if _is_relu(after, gm):
            found[str(n.target)] = ReluAfter(str(bn.target), stream=False)
        elif after.op == "call_function" and after.target in _ADDS:
            relu = _only_user(after)
            if relu is not None and _is_relu(relu, gm):
                found[str(n.target)] = ReluAfter(str(bn.target), stream=True)
    return found


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """``a`` of an eval-mode BN ``bn(z) = a * z + b``, per channel (the stream targets divide by it too)."""
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    scale = torch.rsqrt(var + bn.eps)
    return scale * bn.weight.detach() if bn.weight is not None else scale


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(a, b) with ``bn(z) = a * z + b`` per channel, in eval mode (float64, on the CPU)."""
    a = bn_scale(bn).double()
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    b = -mean.double() * a + (bn.bias.detach().double() if bn.bias is not None else 0.0)
    return a.cpu(), b.cpu()


def gated_targets(y: Tensor, fit: Tensor, theta: Tensor, a: Tensor) -> Tensor:
    """The ReLU-aware targets (see the module docstring); all (rows, channels) but ``a`` (channels)."""
    closed = a * (y - theta) <= 0
    fit_closed = a * (fit - theta) <= 0
    return torch.where(closed, torch.where(fit_closed, fit, theta), y)


def relu_error(z: Tensor, y: Tensor, theta: Tensor, a: Tensor) -> float:
    """Sum of squared differences after the ReLU, in the BN's output units."""
    return float(((a * (z - theta)).clamp_min(0) - (a * (y - theta)).clamp_min(0)).pow(2).sum())
