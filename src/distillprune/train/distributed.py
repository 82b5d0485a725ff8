"""Data-parallel training under ``torchrun``: the process group, rank-0 decisions, what ranks share.

``torchrun --nproc_per_node=N -m distillprune.cli run recipe.yaml`` starts N processes and sets RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; :func:`setup` reads them and joins the group: NCCL for
CUDA tensors (one GPU per process, ``cuda:LOCAL_RANK``) with gloo beside it for CPU tensors, gloo alone
on the CPU. Without ``WORLD_SIZE > 1`` every helper here behaves as rank 0 of 1 and does nothing, so a
single process runs exactly the code it ran before.

What is shared, and how (the rest of the package calls only these):

* decisions (pruning plans, blocks, channels, latency): made once on rank 0 (:func:`once`,
  :func:`replicate`) and sent to the others as JSON -- never pickled -- which replay the history ops;
  :func:`check_same_architecture` then compares a hash of the history and the parameter shapes;
* training: :class:`DataParallel` (DDP around the model, the objective's own trainable parameters
  averaged by hand, buffers taken from rank 0, BatchNorm optionally synchronised);
* files: only rank 0 writes (:func:`is_rank0`); :func:`barrier` where the others must wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from distillprune import errors
from distillprune.core.history import HistoryOp, op_from_dict
from distillprune.errors import DistillpruneError

log = logging.getLogger("distillprune.distributed")

T = TypeVar("T")


# -- the process group ---------------------------------------------------------------------------------
def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_active() -> bool:
    """Whether this process is one of several in an initialised group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_rank0() -> bool:
    """The process that writes files, prints, measures latency and makes pruning decisions."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors (gloo beside it for the CPU ones: metrics, decisions), gloo on the CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> bool:
    """Join torchrun's group when started by torchrun with more than one process; returns whether this
    call initialised it. On CUDA each process takes the GPU ``LOCAL_RANK``."""
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(device))
    return True


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The group for one run: joined on entry (under torchrun), left on exit if this call joined it."""
    joined = setup(device)
    try:
        yield
    except BaseException:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if joined and dist.is_initialized():
        _closing_barrier()
        dist.destroy_process_group()


def _closing_barrier(timeout_s: float = 120.0) -> None:
    """Every rank reaches the end before any leaves the group: a rank that tore gloo down while another still
    held its pairs could abort at exit ("terminate called without an active exception"). Bounded on gloo, so
    a rank that died does not hold the others for ever; the run itself has already succeeded here."""
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError as e:  # a peer gone: nothing left to wait for
        log.warning("closing barrier: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)


def barrier() -> None:
    if is_active():
        dist.barrier()


# -- sharing values (JSON through byte tensors: nothing is unpickled) -----------------------------------
def _bytes_tensor(obj: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)


def _from_bytes(t: torch.Tensor) -> Any:
    return json.loads(t.numpy().tobytes().decode())


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """``obj`` (JSON-able) as rank ``src`` holds it, on every rank."""
    if not is_active():
        return obj
    data = _bytes_tensor(obj) if rank() == src else torch.empty(0, dtype=torch.uint8)
    n = torch.tensor([data.numel()], dtype=torch.long)
    dist.broadcast(n, src)
    if rank() != src:
        data = torch.empty(int(n), dtype=torch.uint8)
    dist.broadcast(data, src)
    return _from_bytes(data)


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-able), in rank order."""
    if not is_active():
        return [obj]
    data = _bytes_tensor(obj)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long))
    longest = int(max(sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    out = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(out, padded)
    return [_from_bytes(t[: int(s)]) for t, s in zip(out, sizes, strict=True)]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks (float64 on the CPU: one small message)."""
    if not is_active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def once(fn: Callable[[], T], encode: Callable[[T], Any] = lambda v: v, decode: Callable[[Any], T] = lambda v: v) -> T:
    """``fn()`` run on rank 0 only, its result (``encode``d to JSON, ``decode``d back) on every rank.

    A failure on rank 0 fails every rank with the same one-line error instead of leaving the others
    waiting: a bad-input error (DistillpruneError) keeps its class and message."""
    if not is_active():
        return fn()
    sent: dict[str, Any] = {}
    if is_rank0():
        try:
            result = fn()
            sent = {"value": encode(result)}
            json.dumps(sent)  # fails here, not while the others wait
        except DistillpruneError as e:
            broadcast_json({"error": type(e).__name__, "bad_input": True, "message": str(e)})
            raise
        except Exception as e:
            broadcast_json({"error": "RuntimeError", "message": f"rank 0 failed: {type(e).__name__}: {e}"})
            raise
    got = broadcast_json(sent)
    if "error" in got:
        if not got.get("bad_input"):
            raise RuntimeError(got["message"])
        cls = getattr(errors, got["error"], None)
        raise (cls if isinstance(cls, type) and issubclass(cls, DistillpruneError) else DistillpruneError)(
            got["message"]
        )
    return result if is_rank0() else decode(got["value"])


def replicate(
    cut: Callable[[], None], history: list[HistoryOp], replay: Callable[[HistoryOp], None], report: Any = None
) -> None:
    """Run ``cut`` -- which appends history ops (and may update the dataclass ``report``) -- on rank 0 only;
    the other ranks receive the new ops as JSON and ``replay`` each, and take rank 0's report fields."""
    if not is_active():
        cut()
        return
    from distillprune.core.reporting import from_jsonable, to_jsonable

    start = len(history)

    def decide() -> dict[str, Any]:
        cut()
        return {
            "ops": [op.to_dict() for op in history[start:]],
            "report": None if report is None else to_jsonable(report),
        }

    decided = once(decide)
    if is_rank0():
        return
    for d in decided["ops"]:
        replay(op_from_dict(d))
    if report is not None:
        theirs = from_jsonable(type(report), decided["report"])
        for name in decided["report"]:
            setattr(report, name, getattr(theirs, name))


def architecture_fingerprint(model: nn.Module, history: Iterable[HistoryOp]) -> str:
    """A short hash of the history ops, every state tensor's shape and each parameter's count of zeros
    (unstructured sparsity and clustering live in the weights)."""
    h = hashlib.sha256(json.dumps([op.to_dict() for op in history], sort_keys=True).encode())
    zeros = {name: int((p == 0).sum()) for name, p in model.named_parameters()}
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{zeros.get(name, '')};".encode())
    return h.hexdigest()[:12]


def check_same_architecture(model: nn.Module, history: Iterable[HistoryOp], where: str) -> None:
    """Fail, in one line on every rank, when the ranks' models differ in architecture."""
    if not is_active():
        return
    prints = all_gather_json(architecture_fingerprint(model, list(history)))
    if len(set(prints)) > 1:
        held = ", ".join(f"rank {i}: {p}" for i, p in enumerate(prints))
        raise DistillpruneError(
            f"ranks hold different architectures {where} ({held}; hash of the history "
            "and parameter shapes): a pruning decision was not shared"
        )


# -- training ------------------------------------------------------------------------------------------
@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` with rank ``src``'s values (in place)."""
    if not is_active():
        return
    for t in tensors:
        dist.broadcast(t.data, src)


class DataParallel:
    """What ``fit`` needs to train one model on every rank (a no-op in a single process).

    ``start`` gives the model as the objective should call it: wrapped in DistributedDataParallel, which
    averages the model's gradients during backward. The objective's own trainable parameters (feature
    adapters, a mutual peer) are not in the model: :meth:`average_grads` averages theirs by hand. The
    teacher lives outside both and runs locally on each rank, never wrapped. ``sync_bn`` swaps every
    BatchNorm of the model and the objective for :class:`~distillprune.train.syncbn.SyncBatchNorm`
    (statistics over the global batch) until :meth:`finish`.
    """

    def __init__(self, model: nn.Module, objective: nn.Module, device: torch.device, sync_bn: bool = False):
        self.model, self.objective, self.device = model, objective, device
        self.active = is_active()
        self.rank, self.world = (rank(), world_size()) if self.active else (0, 1)
        self.sync_bn = sync_bn and self.active
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def start(self) -> nn.Module:
        if not self.active:
            return self.model
        # rank 0's state everywhere (DDP's constructor does it for the model's): work done on rank 0 alone
        # may have drawn from its RNG before the objective built its adapters. The teacher is held outside
        # the objective's modules (in a list), so it is not part of this state and is never wrapped.
        broadcast_tensors(self.objective.state_dict().values())
        if self.sync_bn:
            from distillprune.train.syncbn import swap_batchnorms

            self._swapped = swap_batchnorms(self.model) + swap_batchnorms(self.objective)
        if not any(p.requires_grad for p in self.model.parameters()):
            broadcast_tensors(self.model.state_dict().values())
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = (
            [self.device.index if self.device.index is not None else torch.cuda.current_device()]
            if self.device.type == "cuda"
            else None
        )
        return DistributedDataParallel(self.model, device_ids=ids)

    def loss_scale(self, local: int, total: int) -> float:
        """The factor that makes DDP's mean of per-rank mean losses the mean over the global batch, even
        when the ranks' shares of a batch differ in size."""
        return local * self.world / total if self.active else 1.0

    def average_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of parameters DDP does not hold (the same set has gradients on every rank)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BN running statistics, observers, queues) on every rank: the ranks then hold
        one model, to evaluate, checkpoint and prune."""
        if self.active:
            broadcast_tensors([*self.model.buffers(), *self.objective.buffers()])

    def finish(self) -> None:
        """Put the model's own BatchNorms back (also after a failure: no collective here)."""
        if self._swapped:
            from distillprune.train.syncbn import restore_batchnorms

            restore_batchnorms(self._swapped)
            self._swapped = []
