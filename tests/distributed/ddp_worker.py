"""Run under torchrun by test_torchrun.py: the distributed pieces, each checked on every rank; results go
to OUT/rank<r>.json (and rank 0's trained weights to OUT/*.safetensors, compared with a single process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ddp_helpers as H
import torch
from safetensors.torch import save_file
from torch import nn

from distillprune.errors import DataError, DistillpruneError
from distillprune.prune import prune_
from distillprune.prune.depth import remove_block
from distillprune.train import distributed as ddp
from distillprune.train import fit
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.syncbn import SyncBatchNorm


def sync_bn_matches_one_batch() -> dict[str, float]:
    """SyncBatchNorm on each rank's share (7 and 6 samples) equals BatchNorm on the whole batch: outputs,
    running statistics, weight/bias gradients (averaged as DDP does) and input gradients (W times the
    global loss's, as each rank's loss is weighted by W * share)."""
    g = torch.Generator().manual_seed(0)
    x, gy = torch.randn(13, 4, 5, 5, generator=g) * 3 + 1, torch.randn(13, 4, 5, 5, generator=g)
    ref = nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(4, generator=g) + 0.5)
        ref.bias.copy_(torch.randn(4, generator=g))
    sync = SyncBatchNorm.sharing(nn.BatchNorm2d(4))
    sync.load_state_dict(ref.state_dict())
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    (y_ref * gy).sum().div(13).backward()
    lo, hi = (0, 7) if ddp.rank() == 0 else (7, 13)
    xs = x[lo:hi].clone().requires_grad_()
    y = sync(xs)
    par = ddp.DataParallel(sync, nn.Identity(), torch.device("cpu"))
    ((y * gy[lo:hi]).sum() / (hi - lo) * par.loss_scale(hi - lo, 13)).backward()
    par.average_grads([sync.weight, sync.bias])
    diff = {
        "y": (y - y_ref[lo:hi]).abs().max(),
        "dx": (xs.grad / ddp.world_size() - xr.grad[lo:hi]).abs().max(),
        "dw": (sync.weight.grad - ref.weight.grad).abs().max(),
        "db": (sync.bias.grad - ref.bias.grad).abs().max(),
        "running_mean": (sync.running_mean - ref.running_mean).abs().max(),
        "running_var": (sync.running_var - ref.running_var).abs().max(),
    }
    return {k: float(v.detach()) for k, v in diff.items()}


def errors_reach_every_rank() -> dict[str, str]:
    out = {}

    def bad() -> None:
        raise DataError("rank 0 found bad data")

    try:
        ddp.once(bad)
    except DataError as e:
        out["once"] = str(e)
    m = H.model()
    if ddp.rank() == 1:
        remove_block(m, "layer1.1")  # a decision taken on one rank only
    try:
        ddp.check_same_architecture(m, [], "after a lopsided cut")
    except DistillpruneError as e:
        out["mismatch"] = str(e)
    return out


def main(out: Path) -> None:
    ddp.setup(torch.device("cpu"))
    torch.set_num_threads(1)
    rank = ddp.rank()
    res: dict = {
        "rank": rank,
        "world": ddp.world_size(),
        "sync_bn": sync_bn_matches_one_batch(),
        "errors": errors_reach_every_rank(),
    }
    data = H.small_digits()

    m, obj = H.model(), H.kd_fitnet()
    torch.manual_seed(123)  # the adapter's initialisation
    res["fit"] = fit(
        m,
        data,
        H.fit_settings(),
        obj,
        context=Context(H.RT, LoaderOptions(batch_size=H.BATCH, seed=3, crop_padding=1, hflip=True)),
    )
    if rank == 0:
        save_file(
            {
                **{f"model.{k}": v.contiguous() for k, v in m.state_dict().items()},
                **{f"adapter.{k}": v.contiguous() for k, v in obj.losses.state_dict().items()},
            },
            str(out / "fit.safetensors"),
        )

    m = H.model(1)
    report = prune_(m, H.PRUNE, data, context=Context(H.RT, LoaderOptions(H.BATCH, 0)))
    res["prune"] = {
        "history": [op.to_dict() for op in report.history],
        "removed_blocks": report.removed_blocks,
        "channels_removed": report.channels_removed,
        "fingerprint": ddp.architecture_fingerprint(m, report.history),
    }
    if rank == 0:
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out / "prune.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    ddp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
