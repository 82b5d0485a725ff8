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

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, cast

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
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig, Span
from distillprune.train.logging import RunLogger
from distillprune.train.schedules import lr_factor


class ObjectiveHooks(Protocol):
    """What ``fit`` calls on its objective (an nn.Module, see distill.distiller) besides ``objective(model, x,
    y) -> (loss, logits)``; the optional hooks (check_labels, to_device, trainable, begin_epoch) are looked
    up by name."""

    def attach(self, model: nn.Module, probe: Batch) -> None: ...

    def detach(self) -> None: ...


@dataclass
class FitSettings:
    """How long and how ``fit`` trains. ``epochs`` may be fractional (that share of an epoch's batches).

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

    def __post_init__(self) -> None:
        values = [self.epochs, self.start, *(self.schedule_span or ())]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise DistillpruneError(f"training epochs, start and schedule span must be finite and >= 0, got {values}")

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


def spanned(span: Span | None) -> tuple[float, tuple[float, float] | None]:
    """FitSettings' (start, schedule_span) of a session's ``span`` (None: a run of its own)."""
    return (0.0, None) if span is None else (span.start, span.schedule)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    if runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(runtime: RuntimeConfig, device: torch.device):
    if runtime.amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if runtime.amp == "bf16" else torch.float16)


def make_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # no weight decay on BN/bias (1-d) parameters: standard practice, and it keeps BN scales meaningful
    decay = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
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
    ckpt_dir: Path, epoch: int, model: nn.Module, objective: nn.Module, opt: torch.optim.Optimizer, history: list[dict]
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
    meta = {"epoch": epoch, "history": history, "param_groups": sd["param_groups"]}
    # the metadata travels inside the one atomically written file: a kill between two files would pair
    # epoch k+1's weights with epoch k's record (last.json is a readable copy)
    atomic_write(
        ckpt_dir / "last.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta, default=_plain)}),
    )
    write_json(ckpt_dir / "last.json", meta)


def _load(ckpt_dir: Path, model: nn.Module, objective: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list]:
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


def fit(
    model: nn.Module,
    data: DataBundle,
    settings: FitSettings,
    objective: nn.Module,
    *,
    runtime: RuntimeConfig,
    seed: int = 0,
    batch_size: int = 64,
    crop_padding: int = 0,
    hflip: bool = False,
    ckpt_dir: Path | None = None,
    resume: bool = False,
    logger: RunLogger | None = None,
    on_step: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train ``model`` in place for ``settings.epochs``; returns one record per epoch.

    Under torchrun (every rank calls it) ``batch_size`` is the global batch; see ``train.distributed``."""
    hooks = cast(ObjectiveHooks, objective)  # an nn.Module with the hooks (typing has no intersection)
    if getattr(objective, "label_free", False):  # a self-supervised objective: no label is read, none served
        data = data.without_labels()
    views = getattr(objective, "views", None)  # and it may learn from two augmented views of every image
    check_labels = getattr(objective, "check_labels", None)
    if check_labels is not None:  # losses that need labels the data lacks fail before training
        check_labels(data.train.y is not None)
    device = resolve_device(runtime)
    ddp.setup(device)  # joins torchrun's process group if there is one and nobody joined it yet
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    model.to(device)
    to_device = getattr(objective, "to_device", None)
    if to_device is not None:
        to_device(device)
    if runtime.channels_last and device.type != "cuda":
        # torch 2.13's oneDNN channels-last conv backward corrupts memory on pruned shapes
        # (1x1 stride-2, in_channels % 8 != 0); channels_last buys nothing on the CPU anyway
        warnings.warn("runtime.channels_last is ignored on the CPU", stacklevel=2)
        runtime = runtime.model_copy(update={"channels_last": False})
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    par = ddp.DataParallel(model, objective, device, runtime.sync_bn)  # inactive in a single process
    loader = (TensorLoader if views is None else partial(ViewLoader, views=views))(
        data.train,
        batch_size,
        data.mean,
        data.std,
        shuffle=True,
        crop_padding=crop_padding,
        hflip=hflip,
        drop_last=len(data.train) > batch_size,
        seed=seed,
        device=device,
        rank=par.rank,
        world_size=par.world,
    )
    hooks.attach(model, loader.prepare(data.train.x[: min(8, len(data.train))].to(device)))
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
    window = Window(first, last, *settings.lr_steps(n, first, last))
    start = first // n  # epochs are numbered in the stream: a checkpoint records the next one
    history: list[dict] = []
    if resume and ckpt_dir is not None and has_checkpoint(ckpt_dir):
        start, history = _load(ckpt_dir, model, objective, opt)
    wrapped = par.start()  # DDP around the model under torchrun, else the model
    fwd = torch.compile(wrapped) if runtime.compile else wrapped
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16" and device.type == "cuda")
    from distillprune.train.progress import progress_bar

    scalars = logger.scalars if logger is not None else None
    done = min(max(start * n - first, 0), last - first)
    with progress_bar(runtime.progress and ddp.is_rank0(), desc, last - first, done, scalars) as bar:
        for epoch in range(start, -(-last // n)):
            torch.manual_seed(seed * 7919 + epoch + 1_000_003 * par.rank)  # ranks draw their own dropout
            loader.set_epoch(epoch)
            begin_epoch = getattr(objective, "begin_epoch", None)
            if begin_epoch is not None:  # schedules, teacher-output cache (distill objectives)
                begin_epoch(loader, epoch - first // n, settings.epochs)
            rec = _epoch(
                fwd,
                model,
                loader,
                objective,
                opt,
                scaler,
                settings,
                runtime,
                device,
                epoch,
                on_step,
                bar,
                par,
                extra,
                window,
            )
            par.sync_buffers()
            scored = data.test.y is not None and not is_embedder(model)
            rec["test_acc"] = evaluate(model, data, runtime=runtime, shard=True) if scored else float("nan")
            if runtime.val_loss and hasattr(objective, "eval_loss"):
                rec["val_loss"] = validation_loss(model, objective, data.test, data, runtime)
            history.append(rec)
            if logger:
                logger.log(desc, epoch + 1, rec)
            if ckpt_dir is not None:
                _save(ckpt_dir, epoch + 1, model, objective, opt, history)
    par.finish()  # the model's own BatchNorms back (runtime.sync_bn)
    hooks.detach()
    model.eval()
    return history


def _epoch(
    fwd,
    model,
    loader,
    objective,
    opt,
    scaler,
    settings,
    runtime,
    device,
    epoch,
    on_step,
    bar,
    par: ddp.DataParallel,
    extra: list[nn.Parameter],
    window: Window,
) -> dict:
    model.train()
    t0, seen, labelled = time.perf_counter(), 0, 0
    # running sums stay on the device: reading them every step would synchronise a GPU every step
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    check_every = 1 if device.type == "cpu" else 25
    steps = len(loader)
    lo, hi = max(window.first - epoch * steps, 0), min(window.last - epoch * steps, steps)
    peak = settings.optimizer.lr
    for i, (x, y) in enumerate(loader):
        if i < lo:  # drawn all the same: the augmentation of batch i depends on the batches before it
            continue
        if i >= hi:
            break
        f = lr_factor(settings.schedule, window.lr_offset + epoch * steps + i - window.first, window.lr_total)
        for g in opt.param_groups:
            g["lr"] = peak * f
        if runtime.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime, device):
            loss, logits = objective(fwd, x, y)
        loss_sum += loss.detach().float() * len(x)
        if (i + 1) % check_every == 0 or i + 1 == hi:
            _check_finite(loss_sum, epoch, i, opt, exact=check_every == 1)
        opt.zero_grad(set_to_none=True)
        if par.active:  # DDP averages per-rank losses: weigh each by its share of the global batch
            loss = loss * par.loss_scale(len(x), loader.batch_len(i))
        scaler.scale(loss).backward()
        par.average_grads(extra)
        if settings.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], settings.grad_clip)
        scaler.step(opt)
        scaler.update()
        if on_step is not None:
            on_step(model)
        seen += len(x)
        if y is not None:
            correct += (logits.argmax(1) == y).sum()
            labelled += len(y)
        bar(1, loss=loss_sum / max(seen, 1), lr=peak * f, images=len(x))
    dt = time.perf_counter() - t0
    sums = [float(loss_sum), float(correct), float(seen), float(labelled)]
    loss_total, correct_total, n, n_labelled = ddp.all_reduce_sum(sums) if par.active else sums
    seen = int(n)
    return {
        "epoch": epoch + 1,
        "loss": loss_total / max(seen, 1),
        "train_acc": 100.0 * correct_total / n_labelled if n_labelled else float("nan"),
        "lr": opt.param_groups[0]["lr"],
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
