"""Which dense channels a pruned model kept: per layer, the teacher's index of every surviving output channel.

When the student is the pruned teacher, each of its channels *is* a teacher channel, so features can be
compared channel by channel without adapters (``distill.losses.aligned``). The indices come from the run's
own history: a copy of the dense model has every output channel tagged with its index (the value ``j`` in
the weights of filter ``j``, BatchNorm's running mean ``j``), the history ops are replayed on it exactly as
they were on the student, and the surviving tags are read back. So the indices compose across any number of
cuts and block removals, and hold for every layer of a pruned group, not only the group's root that the
Torch-Pruning history names.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from distillprune.core.history import HistoryOp
from distillprune.errors import DistillpruneError

#: layers whose output channels carry a tag (Conv covers grouped and depthwise: one filter per output)
TAGGED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)

#: float32 holds every integer up to 2**24 exactly, so a tag reads back without rounding error
_MAX_WIDTH = 2**24


@torch.no_grad()
def _tag(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if not isinstance(m, TAGGED):
            continue
        n = _width(m)
        if n > _MAX_WIDTH:
            raise DistillpruneError(f"layer '{name}' has {n} output channels: too wide to tag exactly")
        ids = torch.arange(n, dtype=torch.float32)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:
                raise DistillpruneError(f"BatchNorm '{name}' tracks no running statistics: cannot tag it")
            m.running_mean.copy_(ids)
        else:
            m.weight.copy_(ids.view(-1, *([1] * (m.weight.dim() - 1))).expand_as(m.weight))


def _width(m: nn.Module) -> int:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features
    return int(m.weight.shape[0])  # type: ignore[index]  # Conv/Linear: (out, ...)


def _read(m: nn.Module) -> torch.Tensor:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        assert m.running_mean is not None  # checked when tagged
        tags = m.running_mean
    else:
        weight = m.weight
        assert isinstance(weight, torch.Tensor)  # Conv / Linear
        tags = weight.flatten(1)[:, 0]  # every entry of filter j holds j
    return tags.detach().round().long().cpu()


def kept_channels(dense: nn.Module, ops: Sequence[HistoryOp], input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """For every Conv/Linear/BatchNorm layer of ``dense`` pruned by ``ops`` (in order), the indices in
    ``dense`` of the output channels it keeps (sorted, a LongTensor); layers ``ops`` removed are absent.

    ``dense`` is not modified (a tagged CPU copy is replayed); weight-only ops (sparsity) change no width."""
    tagged = copy.deepcopy(dense).cpu().float().eval()
    _tag(tagged)
    for op in ops:
        if not op.weights_only:
            op.replay(tagged, input_shape)
    return {name: _read(m) for name, m in tagged.named_modules() if isinstance(m, TAGGED)}
