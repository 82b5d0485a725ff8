"""Which parameters of a fine-tuned student train first (``TrainingOptions.trainable``).

A pruned student differs from its teacher in a few places: the layers whose channels were cut and the layers that
now read a removed block's input. Training only those (and every normalisation's scale and shift, and the biases)
for the first share of a fine-tune adapts the network around the cuts before the rest moves (the few-shot
recovery literature: FSKD, Li et al. 2020; MiR; PRACTISE), and leaves every layer the cut did not touch as the
teacher trained it.
"""

from __future__ import annotations

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def first_parameters(model: nn.Module, policy: str, teacher: nn.Module | None) -> list[nn.Parameter] | None:
    """The parameters that train during the first share of a fine-tune under ``policy`` (None: all of them).
    ``near_cuts`` needs the teacher the student was cut from; without one it is ``norms``."""
    if policy == "all":
        return None
    chosen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, _NORMS):
            chosen.update({id(p): p for p in m.parameters(recurse=False)})
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            chosen[id(p)] = p
    if policy == "near_cuts" and teacher is not None:
        for m in near_cuts(model, teacher):
            chosen.update({id(p): p for p in m.parameters(recurse=False)})
    return [p for p in model.parameters() if id(p) in chosen]


def near_cuts(model: nn.Module, teacher: nn.Module) -> list[nn.Module]:
    """The student's layers next to a cut: a Conv/Linear whose weight differs in shape from the teacher's at the
    same path (channels removed from its input or output), and the first Conv/Linear after a block that is the
    identity in the student but not in the teacher (a removed block)."""
    t_params = dict(teacher.named_parameters())
    t_modules = dict(teacher.named_modules())
    out: dict[int, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            tw = t_params.get(f"{name}.weight")
            if tw is None or tw.shape != m.weight.shape:
                out[id(m)] = m
        if isinstance(m, nn.Identity) and name in t_modules and not isinstance(t_modules[name], nn.Identity):
            nxt = _next_layer(model, name)
            if nxt is not None:
                out[id(nxt)] = nxt
    return list(out.values())


def _next_layer(model: nn.Module, path: str) -> nn.Module | None:
    """The first Conv/Linear, in module order, of the modules registered after ``path`` in the model."""
    names = [n for n, _ in model.named_modules()]
    at = names.index(path)
    for n in names[at + 1 :]:
        m = model.get_submodule(n)
        if isinstance(m, _LAYERS) and not n.startswith(f"{path}."):
            return m
    return None
