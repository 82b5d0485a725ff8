"""``recover_(pruned, dense, calibration, cfg)``: the recovery engine as one library verb.

The prune session calls it after every structural cut (planned widths, uniform width steps, block removal)
and the planner for every candidate, so candidates are compared after recovery. BatchNorm statistics are
re-estimated afterwards by the caller (``prune.estimate.recalibrate_bn``), on the same calibration batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distillprune.core.progress import expect, phase, tick
from distillprune.errors import DistillpruneError
from distillprune.prune.recovery.compensate import compensate
from distillprune.prune.recovery.config import RecoveryConfig
from distillprune.prune.recovery.lstsq import dense_rows, refit
from distillprune.prune.recovery.report import LayerRecovery, RecoveryReport
from distillprune.prune.recovery.targets import layer_targets

Calibration = Tensor | Sequence[Tensor | tuple[Tensor, object]]


def calibration_batches(calib: Calibration, limit: int, batch_size: int = 128) -> list[Tensor]:
    """Input batches, at most ``limit`` samples in all (labels, if given, are dropped)."""
    batches = (
        list(calib.split(batch_size))
        if isinstance(calib, Tensor)
        else [b[0] if isinstance(b, tuple) else b for b in calib]
    )
    out, n = [], 0
    for b in batches:
        if n >= limit:
            break
        out.append(b[: limit - n])
        n += len(out[-1])
    return out


@torch.no_grad()
@phase("recovery", unit="layers")
def recover_(
    pruned: nn.Module,
    dense: nn.Module,
    calibration: Calibration | None,
    cfg: RecoveryConfig | None = None,
    seed: int = 0,
    example: Tensor | None = None,
) -> RecoveryReport:
    """Re-fit ``pruned`` (in place) toward ``dense`` (the model the cut started from; unchanged). Without
    calibration data (``None``), ``lstsq`` falls back to ``bias`` compensation, which needs ``example`` (one
    input, for the layer order) instead. Deterministic for a seed."""
    cfg = cfg or RecoveryConfig()
    t0 = time.perf_counter()
    batches = [] if calibration is None else calibration_batches(calibration, cfg.calib_samples)
    method = cfg.method if batches or cfg.method == "none" else "bias"
    report = RecoveryReport(method, samples=sum(len(b) for b in batches))
    if method == "none":
        return report
    x = batches[0][:1] if batches else example
    if x is None:
        raise DistillpruneError("recovery without calibration data needs an example input (example=...)")
    was, was_dense = pruned.training, dense.training
    pruned.eval(), dense.eval()
    try:
        if method == "bias":
            report.layers = compensate(pruned, dense, x)
        else:
            _least_squares(report, pruned, dense, x, batches, cfg, seed)
    finally:
        pruned.train(was), dense.train(was_dense)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


#: what a model whose layers the engine cannot read raises (a layout it does not know): the layer, or the
#: whole pass, is left as the cut left it and named in the report -- recovery never breaks a prune
UNREADABLE = (RuntimeError, IndexError, ValueError, KeyError, TypeError)


def _least_squares(
    report: RecoveryReport,
    pruned: nn.Module,
    dense: nn.Module,
    x: Tensor,
    batches: list[Tensor],
    cfg: RecoveryConfig,
    seed: int,
) -> None:
    targets, skipped = layer_targets(pruned, dense, x, cfg.scope, cfg.stream, cfg.relu)
    report.layers = skipped
    try:
        rows = dense_rows(dense, targets, batches, cfg.positions_per_image, seed)
    except UNREADABLE as e:
        why = f"recovery cannot read the dense outputs ({type(e).__name__}: {_first(e)}); left as cut"
        report.layers += [LayerRecovery(t.path, skipped=why) for t in targets]
        return
    expect(len(targets))
    for t, r in zip(targets, rows, strict=True):
        tick()
        try:  # a refit writes the layer's weights only once its solve is accepted: a failure leaves it as cut
            report.layers.append(refit(pruned, t, batches, r, 1e-3 if cfg.damp is None else cfg.damp))
        except UNREADABLE as e:
            why = f"recovery cannot fit it ({type(e).__name__}: {_first(e)}); left as cut"
            report.layers.append(LayerRecovery(t.path, skipped=why))


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:120]
