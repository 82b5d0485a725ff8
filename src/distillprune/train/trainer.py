"""The one training loop, used by every stage that trains.

AMP (bf16/fp16), channels_last, optional torch.compile, step-based lr schedules, a rich
progress bar, JSONL/TensorBoard logs, an atomic checkpoint after every epoch and ``resume``
that continues after the last completed epoch. Each epoch seeds torch and the loader from
(seed, epoch), so a resumed run reproduces the uninterrupted one.

Under torchrun the same loop runs on every rank (``train.distributed``): DistributedDataParallel,
``batch_size`` is the global batch (each rank takes its share), metrics are summed over the ranks,
evaluation is split between them, and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from distillprune.core.batch import Batch, call, is_embedder
from distillprune.core.io import atomic_write, loads, write_json
from distillprune.data.base import DataBundle, Split, TensorLoader
from distillprune.data.views import ViewLoader
from distillprune.errors import CheckpointError, DistillpruneError, TrainingDiverged
from distillprune.train import distributed as ddp
from distillprune.train.batchnorm import renormalize, set_statistics_frozen
from distillprune.train.config import KeepBestConfig, OptimizerConfig, RuntimeConfig, ScheduleConfig, Span
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.device import autocast, resolve_device
from distillprune.train.guard import HOLDOUT_SEED, KeepBest, holdout
from distillprune.train.logging import RunLogger
from distillprune.train.schedules import lr_factor
from distillprune.train.trainable import first_parameters


class Objective(Protocol):
    """What ``fit`` trains with (an ``nn.Module``: ``distill.distiller``, ``ssl.objective``): ``objective(model,
    x, y) -> (loss, logits)`` on every batch, ``attach(model, probe)`` before the first step (taps, heads sized
    from the probe batch) and ``detach()`` after the last.

    Optional, read when present: ``label_free`` (no label is read, none served), ``views`` (two augmented views
    of every image, ``data.views``), ``check_labels(has_labels)`` (fails before training), ``to_device(device)``,
    ``trainable()`` (parameters trained beside the model's), ``reference()`` (the model ``trainable_first``
    compares with), ``begin_epoch(loader, epoch, epochs)`` and ``eval_loss(model, x, y)`` (held-out loss)."""

    def __call__(self, model: Any, x: Batch, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attach(self, model: nn.Module, probe: Batch) -> None: ...

    def detach(self) -> None: ...


@dataclass
class FitSettings:
    """How long and how ``fit`` trains. ``epochs`` may be fractional (that share of an epoch's batches).

        ``keep_best``: hold out training images and end on the best point judged on them, the start included
        (``train.guard``; None: off). ``bn_renormalize``: re-normalise BatchNorm before the first step, keeping the
        function (``train.batchnorm``). ``bn_frozen``: the share of the run's batches with BatchNorm statistics
        frozen. ``trainable_first``: the parameters that train during the first ``trainable_share`` of the run (``all``,
    ``norms``, ``near_cuts``: ``train.trainable``). ``train.policy.settings`` fills these from a stage's training
    options and regime.

        ``start``: where in the stream of epochs this run begins (a prune step after others: 0.25 starts a
        quarter into epoch 0's shuffle, so quarter-epoch steps together see every sample once per epoch).
        ``schedule_span``: ``(offset, length)`` in epochs of the learning-rate schedule this run is part of
        (one schedule over several runs); None: the schedule spans this run alone."""

    epochs: float
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    grad_clip: float | None = None
    start: float = 0.0
    schedule_span: tuple[float, float] | None = None
    keep_best: KeepBestConfig | None = None
    bn_renormalize: bool = False
    bn_frozen: float = 0.0
    trainable_first: str = "all"
    trainable_share: float = 0.25

    def __post_init__(self) -> None:
        values = [self.epochs, self.start, *(self.schedule_span or ())]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise DistillpruneError(f"training epochs, start and schedule span must be finite and >= 0, got {values}")
        if self.optimizer.lr is None:
            raise DistillpruneError(
                "FitSettings needs a peak learning rate (optimizer.lr); train.policy.settings derives one from "
                "the training options and the regime"
            )
        if not 0.0 <= self.bn_frozen <= 1.0:
            raise DistillpruneError(f"bn_frozen is a share of the run in [0, 1], got {self.bn_frozen}")

    def batches(self, per_epoch: int) -> tuple[int, int]:
        """The run's global batch indices ``[first, last)`` in the epoch stream (``per_epoch`` batches each)."""
        first, count = round(self.start * per_epoch), round(self.epochs * per_epoch)
        if self.epochs > 0 and count == 0:
            raise DistillpruneError(
                f"{self.epochs:g} epochs is less than one batch of the {per_epoch} an epoch has: "
                f"train at least 1/{per_epoch} of an epoch"
            )
        return first, first + count

    def lr_steps(self, per_epoch: int, first: int, last: int) -> tuple[int, int]:
        """(the schedule step of global batch ``first``, the schedule's length in batches)."""
        if self.schedule_span is None:
            return 0, last - first
        offset, length = self.schedule_span
        return round(offset * per_epoch), max(round(length * per_epoch), 1)


@dataclass(frozen=True)
class Window:
    """A run's global batches ``[first, last)``, the lr schedule's step at ``first`` and its length."""

    first: int
    last: int
    lr_offset: int
    lr_total: int
    per_epoch: int = 1


def spanned(span: Span | None) -> tuple[float, tuple[float, float] | None]:
    """FitSettings' (start, schedule_span) of a session's ``span`` (None: a run of its own)."""
    return (0.0, None) if span is None else (span.start, span.schedule)


def make_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # no weight decay on BN/bias (1-d) parameters: standard practice, and it keeps BN scales meaningful
    decay = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.lr is None:  # the regime's default is filled in by train.policy.settings before a fit
        raise DistillpruneError("train.optimizer.lr is unset: settings() fills the regime's default")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle,
    split: Split | None = None,
    batch_size: int = 256,
    runtime: RuntimeConfig | None = None,
    shard: bool = False,
) -> float:
    """Top-1 accuracy (in %) on the test split (or ``split``). ``shard``: under torchrun, each rank scores
    its own contiguous part and the counts are summed (every rank must call it then)."""
    runtime = runtime or RuntimeConfig(progress=False)
    device = resolve_device(runtime)
    split = split or data.test
    if split.y is None:
        raise ValueError("evaluation needs labels")
    total = len(split)
    if shard and ddp.is_active() and total >= ddp.world_size():
        n, w, r = total, ddp.world_size(), ddp.rank()
        lo, hi = r * n // w, (r + 1) * n // w
        split = Split(split.x[lo:hi], split.y[lo:hi])
    was_training = model.training
    model.eval()
    loader = TensorLoader(split, batch_size, data.mean, data.std, device=device)
    correct = 0
    for x, y in loader:
        assert y is not None  # the split's labels were checked above
        with autocast(runtime, device):
            correct += int((call(model, x).argmax(1) == y).sum())
    model.train(was_training)
    if len(split) != total:
        correct = int(ddp.all_reduce_sum([correct])[0])
    return 100.0 * correct / total


@torch.no_grad()
def validation_loss(
    model: nn.Module, objective: nn.Module, split: Split, data: DataBundle, runtime: RuntimeConfig
) -> float:
    """The mean of ``objective.eval_loss`` over ``split`` (the held-out split: a validation split under
    ``data.validation_split``), the model in eval mode; nothing that training reads is changed."""
    device = resolve_device(runtime)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in TensorLoader(split, 256, data.mean, data.std, device=device):
        with autocast(runtime, device):
            total += float(objective.eval_loss(model, x, y)) * len(x)  # type: ignore[operator]
        n += len(x)
    model.train(was_training)
    return total / max(n, 1)


def _save(
    ckpt_dir: Path,
    epoch: int,
    model: nn.Module,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    history: list[dict],
    guard: KeepBest | None = None,
) -> None:
    if not ddp.is_rank0():  # under torchrun the ranks hold one model; rank 0 writes it
        return
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update(
        {
            f"objective.{k}": v.detach().contiguous()
            for k, v in objective.state_dict().items()
            if not k.startswith("teacher")
        }
    )
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().contiguous()
    meta: dict = {"epoch": epoch, "history": history, "param_groups": sd["param_groups"]}
    if guard is not None:  # the keep-best points so far and the best weights travel with the epoch
        tensors.update(guard.tensors())
        meta["guard"] = guard.meta()
    # the metadata travels inside the one atomically written file: a kill between two files would pair
    # epoch k+1's weights with epoch k's record (last.json is a readable copy)
    atomic_write(
        ckpt_dir / "last.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta, default=_plain)}),
    )
    write_json(ckpt_dir / "last.json", meta)


def _load(
    ckpt_dir: Path, model: nn.Module, objective: nn.Module, opt: torch.optim.Optimizer, guard: KeepBest | None = None
) -> tuple[int, list]:
    try:
        meta = _meta(ckpt_dir)
        tensors = load_file(str(ckpt_dir / "last.safetensors"))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        objective.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("objective.")}, strict=False)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if guard is not None:
            guard.load(meta.get("guard") or {}, tensors)
        return int(meta["epoch"]), list(meta["history"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {ckpt_dir}: corrupt or mismatched checkpoint ({e})") from None


def _meta(ckpt_dir: Path) -> dict:
    """The epoch checkpoint's record: from inside last.safetensors, else (older checkpoints) last.json."""
    with safe_open(str(ckpt_dir / "last.safetensors"), framework="pt") as f:
        inside = (f.metadata() or {}).get("meta")
    meta = loads(inside if inside is not None else (ckpt_dir / "last.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint record is a {type(meta).__name__}, expected a mapping")
    return meta


def _plain(o: object) -> object:
    return o.item() if hasattr(o, "item") else str(o)


def has_checkpoint(ckpt_dir: Path) -> bool:
    """Whether ``ckpt_dir`` holds an epoch checkpoint to resume from."""
    return (ckpt_dir / "last.safetensors").exists()


@dataclass(frozen=True)
class FitRun:
    """What a pipeline run adds to a ``fit``: ``ckpt_dir`` (an atomic checkpoint after every epoch; None: none),
    ``resume`` (continue after the last completed epoch checkpointed there), ``logger`` (JSONL/TensorBoard
    records), ``on_step`` (called with the model after every optimizer step: QAT, masks) and ``desc`` (the run's
    name in the progress bar and the logs)."""

    ckpt_dir: Path | None = None
    resume: bool = False
    logger: RunLogger | None = None
    on_step: Callable[[nn.Module], None] | None = None
    desc: str = "train"


def fit(
    model: nn.Module,
    data: DataBundle,
    settings: FitSettings,
    objective: nn.Module,
    *,
    context: Context,
    run: FitRun | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``settings.epochs``; returns one record per epoch.

    ``context``: the runtime (device, AMP, threads) and the loader options (batch size, seed, crop, flip; its
    ``latency`` is not read); ``run``: checkpoints, resume, logs, a per-step hook (None: none of them).
    With ``settings.keep_best`` the run holds out images of the training split, judges the start and a few
    points per epoch on them, and ends on the best (``train.guard``); the last record carries the curve. With
    ``settings.bn_renormalize`` the BatchNorms are re-normalised before the first step (``train.batchnorm``).
    Under torchrun (every rank calls it) the batch size is the global batch; see ``train.distributed``."""
    run = run or FitRun()
    hooks = cast(Objective, objective)
    data = _served(data, objective)
    device = resolve_device(context.runtime)
    ddp.setup(device)  # joins torchrun's process group if there is one and nobody joined it yet
    if context.runtime.threads:
        torch.set_num_threads(context.runtime.threads)
    model.to(device)
    to_device = getattr(objective, "to_device", None)
    if to_device is not None:
        to_device(device)
    runtime = _cpu_layout(context.runtime, device, model)
    keep = settings.keep_best if _judged(model, objective, data) else None
    train_data, val = (data, None) if keep is None else _held_out(data, keep.samples)
    par = ddp.DataParallel(model, objective, device, runtime.sync_bn)  # inactive in a single process
    loader = _loader(train_data, objective, context.loader, device, par)
    hooks.attach(model, loader.prepare(train_data.train.x[: min(8, len(train_data.train))].to(device)))
    loop = _Loop.start(model, objective, loader, settings, runtime, device, par)
    loop.seed, loop.on_step, loop.logger, loop.desc = context.loader.seed, run.on_step, run.logger, run.desc
    if val is not None:
        loop.guard = KeepBest.plan(keep, val, data, runtime, loop.window)  # type: ignore[arg-type]
    if run.resume and run.ckpt_dir is not None and has_checkpoint(run.ckpt_dir):
        loop.first_epoch, loop.history = _load(run.ckpt_dir, model, objective, loop.opt, loop.guard)
    else:
        loop.begin(train_data)
    loop.run(data, run.ckpt_dir)
    par.finish()  # the model's own BatchNorms back (runtime.sync_bn)
    hooks.detach()
    model.eval()
    return loop.history


def _served(data: DataBundle, objective: nn.Module) -> DataBundle:
    """The data as the objective reads it: without labels for a self-supervised (``label_free``) objective;
    losses that need labels the data lacks fail here, before training (``check_labels``)."""
    if getattr(objective, "label_free", False):
        data = data.without_labels()
    check_labels = getattr(objective, "check_labels", None)
    if check_labels is not None:
        check_labels(data.train.y is not None)
    return data


def _loader(
    data: DataBundle, objective: nn.Module, opts: LoaderOptions, device: torch.device, par: ddp.DataParallel
) -> TensorLoader:
    """The training batches of ``data``: shuffled and augmented per ``opts``, this rank's share under torchrun,
    two augmented views of every image when the objective learns from ``views``."""
    views = getattr(objective, "views", None)
    return (TensorLoader if views is None else partial(ViewLoader, views=views))(
        data.train,
        opts.batch_size,
        data.mean,
        data.std,
        shuffle=True,
        crop_padding=opts.crop_padding,
        hflip=opts.hflip,
        drop_last=len(data.train) > opts.batch_size,
        seed=opts.seed,
        device=device,
        rank=par.rank,
        world_size=par.world,
    )


def _cpu_layout(runtime: RuntimeConfig, device: torch.device, model: nn.Module) -> RuntimeConfig:
    """channels_last on CUDA; ignored (with a warning) on the CPU."""
    if runtime.channels_last and device.type != "cuda":
        # torch 2.13's oneDNN channels-last conv backward corrupts memory on pruned shapes
        # (1x1 stride-2, in_channels % 8 != 0); channels_last buys nothing on the CPU anyway
        warnings.warn("runtime.channels_last is ignored on the CPU", stacklevel=3)
        return runtime.model_copy(update={"channels_last": False})
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    return runtime


def _judged(model: nn.Module, objective: nn.Module, data: DataBundle) -> bool:
    """Whether held-out checks can tell points apart: by top-1 (labels, a classifier) or by the objective's
    held-out loss. A self-supervised objective offers neither (no labels, an embedder, no ``eval_loss``): the
    checks would keep the start, so a fine-tune's default keep-best is off for it."""
    return (data.train.y is not None and not is_embedder(model)) or hasattr(objective, "eval_loss")


def _held_out(data: DataBundle, samples: int) -> tuple[DataBundle, Split]:
    """The bundle to train on (its training split without the held-out images) and the held-out images."""
    train, val = holdout(data.train, samples)
    return dataclasses.replace(data, train=train), val


@dataclass
class _Loop:
    """One ``fit`` run: the model, its objective and optimizer, the batches it trains on (``window``), and what
    runs beside the steps (BatchNorm policy, the keep-best checks, logs, checkpoints)."""

    model: nn.Module
    fwd: Callable[..., Any]  # the model's forward as trained: DDP-wrapped and/or compiled
    objective: nn.Module
    loader: TensorLoader
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    settings: FitSettings
    runtime: RuntimeConfig
    device: torch.device
    par: ddp.DataParallel
    extra: list[nn.Parameter]
    window: Window
    first_epoch: int = 0
    seed: int = 0
    history: list[dict] = field(default_factory=list)
    guard: KeepBest | None = None
    first_params: set[int] | None = None  # ids of the parameters that train first (None: all)
    on_step: Callable[[nn.Module], None] | None = None
    logger: RunLogger | None = None
    desc: str = "train"

    @classmethod
    def start(cls, model, objective, loader, settings, runtime, device, par) -> _Loop:  # type: ignore[no-untyped-def]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise DistillpruneError(
                f"{type(model).__name__} has no trainable parameters (requires_grad is off "
                "everywhere: a frozen teacher or a copy of one?)"
            )
        trainable = getattr(objective, "trainable", None)
        extra: list[nn.Parameter] = list(trainable()) if trainable is not None else []
        opt = make_optimizer(params + extra, settings.optimizer)
        n = len(loader)
        first, last = settings.batches(n)
        lr_offset, lr_total = settings.lr_steps(n, first, last)
        window = Window(first, last, lr_offset, lr_total, per_epoch=n)
        wrapped = par.start()  # DDP around the model under torchrun, else the model
        fwd = torch.compile(wrapped) if runtime.compile else wrapped
        scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16" and device.type == "cuda")
        loop = cls(model, fwd, objective, loader, opt, scaler, settings, runtime, device, par, extra, window)
        loop.first_epoch = first // n  # epochs are numbered in the stream: a checkpoint records the next one
        reference = getattr(objective, "reference", None)
        chosen = first_parameters(model, settings.trainable_first, reference() if callable(reference) else None)
        loop.first_params = None if chosen is None else {id(p) for p in chosen}
        return loop

    def begin(self, data: DataBundle) -> None:
        """Before the first step of a fresh (not resumed) run: BatchNorm re-normalisation, the start judged."""
        if self.settings.bn_renormalize:  # on batches drawn (and augmented) as the training batches are
            ld = self.loader
            calib = TensorLoader(
                data.train,
                256,
                data.mean,
                data.std,
                shuffle=True,
                crop_padding=ld.crop_padding,
                hflip=ld.hflip,
                seed=HOLDOUT_SEED,
                device=self.device,
            )
            renormalize(self.model, [x for _, (x, _) in zip(range(8), calib, strict=False)])
        if self.guard is not None:
            self.guard.check(self.model, self.objective, self.window.first - 1)

    def run(self, data: DataBundle, ckpt_dir: Path | None) -> None:
        """The epochs of the window, each followed by its record, its log line and its checkpoint."""
        from distillprune.train.progress import progress_bar

        w, n = self.window, len(self.loader)
        scalars = self.logger.scalars if self.logger is not None else None
        done = min(max(self.first_epoch * n - w.first, 0), w.last - w.first)
        with progress_bar(self.runtime.progress and ddp.is_rank0(), self.desc, w.last - w.first, done, scalars) as bar:
            for epoch in range(self.first_epoch, -(-w.last // n)):
                torch.manual_seed(self.seed_of(epoch))  # ranks draw their own dropout
                self.loader.set_epoch(epoch)
                begin_epoch = getattr(self.objective, "begin_epoch", None)
                if begin_epoch is not None:  # schedules, teacher-output cache (distill objectives)
                    begin_epoch(self.loader, epoch - w.first // n, self.settings.epochs)
                rec = self.epoch(epoch, bar)
                self.par.sync_buffers()
                self.close_epoch(rec, data, last=epoch == -(-w.last // n) - 1)
                if ckpt_dir is not None:
                    _save(ckpt_dir, epoch + 1, self.model, self.objective, self.opt, self.history, self.guard)

    def seed_of(self, epoch: int) -> int:
        return self.seed * 7919 + epoch + 1_000_003 * self.par.rank

    def close_epoch(self, rec: dict, data: DataBundle, last: bool) -> None:
        """The epoch's record: test top-1 (or NaN), the validation loss if asked, and on the last epoch the
        keep-best curve (the best point's weights restored first)."""
        if last and self.guard is not None:
            if self.guard.restore(self.model):
                self.par.sync_buffers()
            rec.update(self.guard.summary())
        scored = data.test.y is not None and not is_embedder(self.model)
        rec["test_acc"] = evaluate(self.model, data, runtime=self.runtime, shard=True) if scored else float("nan")
        if self.runtime.val_loss and hasattr(self.objective, "eval_loss"):
            rec["val_loss"] = validation_loss(self.model, self.objective, data.test, data, self.runtime)
        self.history.append(rec)
        if self.logger:
            self.logger.log(self.desc, rec["epoch"], rec)

    def epoch(self, epoch: int, bar) -> dict:  # type: ignore[no-untyped-def]
        """One epoch's steps inside the window; returns the epoch's record."""
        model, w, steps = self.model, self.window, len(self.loader)
        model.train()
        t0, seen, labelled = time.perf_counter(), 0, 0
        # running sums stay on the device: reading them every step would synchronise a GPU every step
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        lo, hi = max(w.first - epoch * steps, 0), min(w.last - epoch * steps, steps)
        for i, (x, y) in enumerate(self.loader):
            if i < lo:  # drawn all the same: the augmentation of batch i depends on the batches before it
                continue
            if i >= hi:
                break
            g = epoch * steps + i  # the global batch index
            loss, logits, lr = self.step(g, x, y)
            loss_sum += loss.detach().float() * len(x)
            if self.device.type == "cpu" or (i + 1) % 25 == 0 or i + 1 == hi:
                _check_finite(loss_sum, epoch, i, self.opt, exact=self.device.type == "cpu")
            seen += len(x)
            if y is not None:
                correct += (logits.argmax(1) == y).sum()
                labelled += len(y)
            bar(1, loss=loss_sum / max(seen, 1), lr=lr, images=len(x))
            if self.guard is not None and g in self.guard.at and g + 1 < w.last:
                self.par.sync_buffers()  # under torchrun every rank judges the same weights
                self.guard.check(model, self.objective, g)  # the last check runs after the epoch's sync
                model.train()
        if self.guard is not None and w.last - 1 < (epoch + 1) * steps:
            self.par.sync_buffers()
            self.guard.check(model, self.objective, w.last - 1)
        return self.record(
            epoch, time.perf_counter() - t0, [float(loss_sum), float(correct), float(seen), float(labelled)]
        )

    def step(self, g: int, x, y) -> tuple[torch.Tensor, torch.Tensor, float]:  # type: ignore[no-untyped-def]
        """One optimizer step on global batch ``g``; returns (loss, logits, lr)."""
        w, s = self.window, self.settings
        lr = s.optimizer.lr * lr_factor(s.schedule, w.lr_offset + g - w.first, w.lr_total)  # type: ignore[operator]
        for group in self.opt.param_groups:
            group["lr"] = lr
        set_statistics_frozen(self.model, g - w.first < s.bn_frozen * (w.last - w.first))
        if self.runtime.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.runtime, self.device):
            loss, logits = self.objective(self.fwd, x, y)
        self.opt.zero_grad(set_to_none=True)
        scaled = loss  # (the epoch's record sums the loss itself; the scaled one only drives the gradients)
        if self.par.active:  # DDP averages per-rank losses: weigh each by its share of the global batch
            scaled = loss * self.par.loss_scale(len(x), self.loader.batch_len(g % len(self.loader)))
        self.scaler.scale(scaled).backward()
        self.par.average_grads(self.extra)
        if self.first_params is not None and g - w.first < s.trainable_share * (w.last - w.first):
            for p in self.model.parameters():  # a parameter without a gradient is not stepped (nor decayed)
                if id(p) not in self.first_params:
                    p.grad = None
        if s.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_([p for grp in self.opt.param_groups for p in grp["params"]], s.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.on_step is not None:
            self.on_step(self.model)
        return loss, logits, lr

    def record(self, epoch: int, dt: float, sums: list[float]) -> dict:
        loss_total, correct_total, n, n_labelled = ddp.all_reduce_sum(sums) if self.par.active else sums
        seen = int(n)
        return {
            "epoch": epoch + 1,
            "loss": loss_total / max(seen, 1),
            "train_acc": 100.0 * correct_total / n_labelled if n_labelled else float("nan"),
            "lr": self.opt.param_groups[0]["lr"],
            "seconds": dt,
            "images_per_s": seen / max(dt, 1e-9),
        }


def _check_finite(
    loss_sum: torch.Tensor, epoch: int, step: int, opt: torch.optim.Optimizer, exact: bool = True
) -> None:
    """Raise on a non-finite running loss; ``exact`` is False when it was checked only every few steps."""
    value = float(loss_sum)
    if not math.isfinite(value):
        where = f"step {step + 1}" if exact else f"by step {step + 1}"
        raise TrainingDiverged(
            f"loss is {value} at epoch {epoch + 1}, {where} "
            f"(lr={opt.param_groups[0]['lr']:.3g}); lower the learning rate"
        )
