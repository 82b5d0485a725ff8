"""Structured (channel) pruning on Torch-Pruning's dependency graph.

Channels are physically removed from every coupled layer (residual adds, concats, groups); the
history of each step is recorded as ``[module_name, is_out_channel, indices]`` entries, which
replay on a freshly built model (``replay_channels``) to rebuild a pruned checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn

from distillprune.core.batch import is_embedder
from distillprune.core.modules import LayerSelect
from distillprune.errors import DistillpruneError
from distillprune.prune.config import WidthConfig
from distillprune.prune.heads import find_attentions
from distillprune.prune.importance import IMPORTANCE
from distillprune.prune.safety import SkippedGroup, prunable_groups, skip_unsupported
from distillprune.prune.transactional import transactional_step


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the logits: pruning them would change the task. An embedding model's last
    Conv/Linear is kept too: its output width is the embedding's, which a vector index downstream (and the
    teacher's embedding, for the losses comparing them) expects unchanged."""
    out: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    out += [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m is list(model.modules())[-1]
    ]
    if is_embedder(model):
        last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1:]
        out += [m for m in last if m not in out]
    return out


def ignored(model: nn.Module, layers: LayerSelect, num_classes: int) -> list[nn.Module]:
    """Torch-Pruning's ``ignored_layers``: the classifier and every leaf the selection leaves out."""
    layers.check(model, "width.layers")
    return classifier_layers(model, num_classes) + layers.excluded(model)


@contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning traces the autograd graph: with frozen parameters (a teacher) or under no_grad it
    would find no dependencies and silently prune nothing. Unfreeze while tracing, then restore."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


class NearestRoundPruner(tp.pruner.BasePruner):
    """Torch-Pruning's pruner with kept channels rounded to the *nearest* multiple of ``round_to``, at least one.

    Torch-Pruning rounds the kept count *down*: any ratio above 1/16 then halves a 16-channel layer
    (15 kept -> 8), so on CIFAR-style ResNets (16/32/64 channels) the width ratio asked for and the MACs
    obtained are far apart, and a layer narrower than ``round_to`` would lose every channel. Rounding to
    the nearest multiple keeps each layer within ``round_to / 2`` channels of the ratio asked for.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = max(round_to, int(kept / round_to + 0.5) * round_to)
        return max(current_channels - kept, 0)


if not callable(getattr(tp.pruner.BasePruner, "_round_to", None)):  # pragma: no cover - version guard
    raise ImportError("this torch-pruning has no BasePruner._round_to; install torch-pruning>=1.5,<2")


def width_pruner(
    model: nn.Module, example: torch.Tensor, cfg: WidthConfig, num_classes: int, steps: int = 1
) -> tp.pruner.BasePruner:
    """A pruner that reaches ``cfg.ratio`` after ``steps`` calls to ``step()`` (linear schedule).

    Every layer keeps at least one channel (``round_to`` without rounding is 1) and loses at most
    ``cfg.max_ratio`` of them: Torch-Pruning skips a layer that a ratio would empty, so without these
    bounds a larger ratio could remove *less* (0.99 removed nothing where 0.9 removed 90%). Layer groups
    Torch-Pruning would cut wrongly are skipped before anything is cut (``pruner.skipped``: what and why);
    a ``width.layers`` selection that leaves no group to prune is an error."""
    ratio = min(float(cfg.ratio or 0.0), cfg.max_ratio)
    with traceable(model):
        pruner = NearestRoundPruner(
            model,
            example,
            importance=IMPORTANCE.get(cfg.importance)(),
            pruning_ratio=ratio,
            global_pruning=cfg.global_pruning,
            round_to=cfg.round_to or 1,
            max_pruning_ratio=cfg.max_ratio,
            iterative_steps=steps,
            ignored_layers=ignored(model, cfg.layers, num_classes),
        )
        _check_selection(pruner, model, cfg.layers, num_classes)
        pruner.skipped = skip_unsupported(pruner, model)  # grows when a step has to skip a failing group
        pruner.skipped += leave_heads_whole(pruner, model)
    pruner.example = example
    return pruner


def leave_heads_whole(pruner: tp.pruner.BasePruner, model: nn.Module) -> list[SkippedGroup]:
    """Keep the q/k/v outputs of every hand-written attention (``prune.heads``) out of a uniform step, named:
    Torch-Pruning would cut them as channels, which either breaks the attention's forward or, through a
    ``reshape(..., heads, -1)``, silently moves channels between heads. Whole heads are cut by a target's plan."""
    skipped = []
    for att in find_attentions(model):
        layers = [model.get_submodule(n) for n in att.qkv]
        if all(m in pruner.ignored_layers for m in layers):
            continue
        pruner.ignored_layers += layers
        why = att.why or "a uniform width step cuts channels, not heads (a latency or MACs target cuts whole heads)"
        skipped.append(SkippedGroup(att.root, f"the head channels of the attention `{att.name}`: {why}"))
    return skipped


def _check_selection(pruner: tp.pruner.BasePruner, model: nn.Module, layers: LayerSelect, num_classes: int) -> None:
    if prunable_groups(pruner):
        return
    if layers == LayerSelect():
        return  # nothing in the model can lose channels (e.g. one Linear): the step removes nothing
    everything = prunable_groups(pruner, [m for c in classifier_layers(model, num_classes) for m in c.modules()])
    if everything:
        raise DistillpruneError(
            f"width.layers (include {layers.include}, exclude {layers.exclude}) leaves none of the "
            f"{len(everything)} prunable layer groups of {type(model).__name__}: nothing would be pruned"
        )


def accumulate_gradients(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> None:
    """Sum gradients of ``loss_fn`` over ``batches`` on the model (for Taylor importance)."""
    model.zero_grad(set_to_none=True)
    was = model.training
    model.eval()  # BN in eval: scores should not move the running statistics
    for x, y in batches:
        loss_fn(model, x, y).backward()
    model.train(was)


def prune_step(pruner: tp.pruner.BasePruner) -> list[list]:
    """One pruning step, all or nothing (on failure the model is restored and the error names the layer
    group); returns the history entries it added."""
    before = len(pruner.pruning_history())
    transactional_step(pruner, pruner.model, getattr(pruner, "example", None))
    return [[n, bool(o), [int(i) for i in idx]] for n, o, idx in pruner.pruning_history()[before:]]


def replay_channels(model: nn.Module, example: torch.Tensor, entries: list[list]) -> None:
    """Redo recorded channel removals on ``model`` (same architecture as when they were recorded)."""
    with traceable(model):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    try:
        dg.load_pruning_history([(n, o, list(idx)) for n, o, idx in entries])
    except (AttributeError, IndexError, KeyError) as e:
        raise DistillpruneError(f"pruning history does not fit this model: {e}") from None


@torch.no_grad()
def zero_group(group: tp.Group) -> None:
    """Zero what removing ``group``'s channels would remove (out-channel weights, biases and BN affine).

    With BN in eval mode, the zeroed channels output exactly 0 downstream, so the masked model
    computes what the physically pruned one does: the equivalence tests rely on it.
    """
    for dep, idxs in group:
        layer = dep.target.module
        if getattr(dep.handler, "__name__", "") != "prune_out_channels":
            continue  # removing input channels needs nothing zeroed: those inputs are zero already
        idx = torch.as_tensor(list(idxs), dtype=torch.long)
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            layer.weight[idx] = 0
            if layer.bias is not None:
                layer.bias[idx] = 0
