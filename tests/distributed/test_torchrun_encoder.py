"""An encoder pruned under torchrun (two gloo processes on the CPU) with a latency target: the plan and
every cut are decided on rank 0 and replayed on rank 1, so both ranks end with the same architecture even
though rank 1's timings are rigged to disagree (see ddp_encoder.py)."""

from __future__ import annotations

import json

import ddp_helpers as H
import pytest
import torch.distributed as dist

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def test_encoder_latency_target_gives_both_ranks_one_architecture(tmp_path):
    proc = H.torchrun(str(H.HERE / "ddp_encoder.py"), str(tmp_path))
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["plan"] == r1["plan"] and r0["plan"]["speedup"] >= 1.05  # rank 1 alone would have found none
    assert r0["history"] == r1["history"] and r0["fingerprint"] == r1["fingerprint"]
    assert r0["summary"] == r1["summary"] and r0["summary"]["layers"] < 3  # the plan drops a layer at least
    assert r0["dropped_layers"] == r1["dropped_layers"] and r0["epochs"] == r1["epochs"] == 2
