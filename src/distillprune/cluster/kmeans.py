"""Weight sharing by k-means, per layer (Han et al. 2016, "Deep Compression", sec. 3).

Each Conv2d/Linear weight is replaced by ``codebook[idx]``: k shared values (centroids) and one
index per weight. Fine-tuning trains the centroids only: the gradient of a centroid is the sum of
the gradients of the weights that share it (autograd of the gather does exactly that). When a
layer holds zeros (pruned), they keep a fixed centroid of exactly 0 and the other k - 1 are learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from distillprune.cluster.config import ClusterConfig
from distillprune.cluster.pack import load_packed, save_packed, sizes
from distillprune.core.checkpoint import ArchSpec, history_list
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp, history_op
from distillprune.core.modules import first_match, get_module
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle
from distillprune.distill.modes import finetune_objective
from distillprune.errors import CompressionError
from distillprune.train.config import TrainSummary
from distillprune.train.context import Context
from distillprune.train.trainers import Trainer, fit_trainer


def kmeans_1d(
    w: torch.Tensor, k: int, init: str = "linear", iterations: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the values of ``w`` (1-D); returns (sorted centroids (k,), index per value)."""
    w = w.detach().flatten().float()
    if w.numel() == 0:
        return w.new_zeros(k), torch.zeros(0, dtype=torch.long, device=w.device)
    if init == "linear":
        c = torch.linspace(float(w.min()), float(w.max()), k, device=w.device)
    elif init == "density":
        sample = w if w.numel() <= 1 << 20 else w[torch.randperm(w.numel(), device=w.device)[: 1 << 20]]
        c = torch.quantile(sample, torch.linspace(0, 1, k, device=w.device))
    else:
        g = torch.Generator(device="cpu").manual_seed(seed)
        c = w[torch.randint(0, w.numel(), (k,), generator=g).to(w.device)]
    c = c.sort().values
    for _ in range(iterations):
        idx = torch.bucketize(w, (c[1:] + c[:-1]) / 2)  # nearest centroid, as c is sorted
        sums = torch.zeros_like(c).scatter_add_(0, idx, w)
        counts = torch.bincount(idx, minlength=k).to(c.dtype)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c).sort().values
        if torch.equal(new, c):
            break
        c = new
    return c, torch.bucketize(w, (c[1:] + c[:-1]) / 2)


class SharedWeight(nn.Module):
    """Parametrization ``weight = table[idx]``; learned: the centroids (the table less its fixed 0)."""

    idx: torch.Tensor

    def __init__(self, idx: torch.Tensor, centroids: torch.Tensor, zero_slot: bool):
        super().__init__()
        self.register_buffer("idx", idx)
        self.zero_slot = zero_slot
        self._init: torch.Tensor | None = centroids  # read once, by register_parametrization

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([centroids.new_zeros(1), centroids]) if self.zero_slot else centroids
        return table[self.idx]

    def right_inverse(self, _weight: torch.Tensor) -> torch.Tensor:
        if self._init is None:
            raise CompressionError("cluster: a clustered weight cannot be assigned (its centroids train instead)")
        return self._init


def layer_k(name: str, cfg: ClusterConfig) -> int:
    k = first_match(name, cfg.overrides)
    return cfg.k if k is None else k


@history_op
@dataclass(frozen=True)
class ClusterOp(HistoryOp):
    """Weights shared through k-means codebooks (the shared values live in the weights: nothing to rebuild)."""

    op = "cluster"
    weights_only = True
    k: int
    layers: int


@details_type
@dataclass
class ClusterReport(Details):
    """The clustered weight tensors with their k, and (after packing) the file sizes."""

    kind = "cluster"
    k: int
    clustered: dict[str, int] = field(default_factory=dict)  # weight tensor name -> k
    zeros_kept: int = 0  # layers whose pruned zeros stayed exact zeros
    sizes: dict[str, Any] = field(default_factory=dict)  # from ``cluster.pack.sizes`` / ``save_packed``
    ratio: float | None = None  # dense fp32 bytes / packed file bytes
    training: TrainSummary | None = None


class WeightClustering:
    """``apply()`` clusters the chosen layers (parametrized: only centroids train), ``finalize()`` makes the
    shared weights plain tensors again. ``keep_zero`` re-zeros pruned weights of layers left unclustered."""

    def __init__(self, model: nn.Module, cfg: ClusterConfig | None = None):
        self.model, self.cfg = model, cfg or ClusterConfig()
        self.k: dict[str, int] = {}  # layer name -> k
        self.zero_slot: dict[str, bool] = {}
        self._masks: dict[str, torch.Tensor] = {}

    def layers(self) -> dict[str, nn.Module]:
        out = self.cfg.layers.select(self.model, (nn.Conv2d, nn.Linear))
        if not out:
            sel = self.cfg.layers
            raise CompressionError(
                f"cluster: no Conv2d/Linear layer matches layers.include={sel.include} "
                f"(exclude={sel.exclude}) in {type(self.model).__name__}"
            )
        return out

    @torch.no_grad()
    def apply(self) -> dict[str, int]:
        chosen = self.layers()
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in chosen and bool((m.weight == 0).any()):
                self._masks[name] = m.weight != 0
        for name, m in chosen.items():
            assert isinstance(m, (nn.Conv2d, nn.Linear))  # what layers() selects
            if parametrize.is_parametrized(m, "weight"):
                raise CompressionError(f"cluster: layer '{name}' is already parametrized")
            k = layer_k(name, self.cfg)
            w = m.weight.detach()
            zeros = self.cfg.keep_zeros and bool((w == 0).any())
            if zeros:
                nz = w != 0
                c, i = kmeans_1d(w[nz], k - 1, self.cfg.init, self.cfg.iterations)
                idx = torch.zeros(w.shape, dtype=torch.long, device=w.device)
                idx[nz] = i + 1
            else:
                c, i = kmeans_1d(w, k, self.cfg.init, self.cfg.iterations)
                idx = i.view(w.shape)
            shared = SharedWeight(idx, c.to(w.dtype), zeros)
            parametrize.register_parametrization(m, "weight", shared, unsafe=True)
            shared._init = None
            self.k[name], self.zero_slot[name] = k, zeros
        return dict(self.k)

    @torch.no_grad()
    def keep_zero(self, _model: nn.Module | None = None) -> None:
        for name, mask in self._masks.items():
            m = get_module(self.model, name)
            assert isinstance(m, (nn.Conv2d, nn.Linear))  # apply() masks only these
            w = m.weight
            w.mul_(mask.to(w.device, w.dtype))

    def finalize(self) -> dict[str, int]:
        """Plain weights (each layer holds at most k distinct values); returns {weight tensor name: k}."""
        for name in self.k:
            m = get_module(self.model, name)
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.keep_zero()
        return {f"{name}.weight": k for name, k in self.k.items()}


def cluster_(
    model: nn.Module,
    cfg: ClusterConfig | dict[str, Any] | None = None,
    data: DataBundle | None = None,
    *,
    teacher: nn.Module | None = None,
    trainer: Trainer | None = None,
    history: ArchSpec | list[HistoryOp] | None = None,
    context: Context | None = None,
    out: str | Path | None = None,
) -> ClusterReport:
    """Cluster ``model``'s weights in place as the recipe's cluster stage does: k-means per layer, the centroids
    fine-tuned for ``cfg.epochs`` (with KD from ``teacher``, default a frozen copy of ``model`` as it is now,
    through ``trainer``, default ``fit_trainer(cfg, data, context)``; pruned zeros kept zero), then packed.
    ``report.sizes`` holds the packed sizes next to the dense fp32 size; with ``out`` the packed file
    (``cfg.codec``) is written and read back, and a file that does not give the same weights back is an
    error. ``report.clustered`` ({weight tensor name: k}) is what ``pack`` / ``save_packed`` take.
    ``history`` (an ArchSpec or its ops) receives a ``ClusterOp``."""
    conf = cfg if isinstance(cfg, ClusterConfig) else validate(ClusterConfig, cfg or {}, where="ClusterConfig")
    train, objective = None, None
    if conf.epochs:
        if data is None:
            raise CompressionError(f"cluster: epochs={conf.epochs} fine-tunes the centroids; pass data (a DataBundle)")
        seed = (context or Context()).loader.seed
        objective = finetune_objective(conf.distill, conf.label_smoothing, model, teacher, seed, data)
        train = trainer or fit_trainer(conf, data, context, desc="cluster")
    wc = WeightClustering(model, conf)
    ks = wc.apply()
    records = train(model, objective, conf.epochs, "train", wc.keep_zero) if train and objective is not None else []
    clustered = wc.finalize()
    ops = history_list(history)
    if ops is not None:
        ops.append(ClusterOp(conf.k, len(ks)))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = packed(state, clustered, conf.codec, out)
    ratio = round(info["dense_fp32_bytes"] / info["file_bytes"], 2)
    return ClusterReport(conf.k, clustered, sum(wc.zero_slot.values()), info, ratio, TrainSummary.of(records))


def packed(state: dict[str, torch.Tensor], clustered: dict[str, int], codec: str, out: str | Path | None) -> dict:
    """The packed sizes; with ``out`` the file is written and read back (the round trip must be exact)."""
    if out is None:
        _, info = sizes(state, clustered)
        return {**info, "codec": codec, "file_bytes": info[f"packed_{codec}_bytes"]}
    info = save_packed(out, state, clustered, codec)
    back = load_packed(out)
    if back.keys() != state.keys() or any(not np.array_equal(back[k].numpy(), state[k].numpy()) for k in state):
        raise CompressionError(f"{Path(out).name}: the packed weights do not round-trip")
    return info
