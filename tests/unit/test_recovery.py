"""The recovery engine (prune.recovery): least-squares re-fits, data-free compensation, reports, session use."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from unit_helpers import random_bundle

from distillprune.core.config import validate
from distillprune.errors import DistillpruneError
from distillprune.models.resnet import ResNet
from distillprune.prune.config import PruneConfig
from distillprune.prune.recovery import RecoveryConfig, recover_
from distillprune.prune.recovery.capture import capture
from distillprune.prune.recovery.channels import kept_channels
from distillprune.prune.recovery.compensate import relu_gaussian_mean
from distillprune.prune.session import PruneSession
from distillprune.train.context import Context, LoaderOptions

LSTSQ = RecoveryConfig(damp=1e-9, positions_per_image=1000)


def _sub(conv: nn.Conv2d, out: list[int] | None = None, ins: list[int] | None = None, **kw) -> nn.Conv2d:
    """A copy of ``conv`` keeping output channels ``out`` and input channels ``ins`` (what a cut does)."""
    w = conv.weight.detach()
    w = w[out] if out is not None else w
    w = w[:, ins] if ins is not None else w
    groups = kw.get("groups", 1)
    c = nn.Conv2d(
        w.shape[1] * groups,
        w.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
        groups=groups,
    )
    c.weight.data.copy_(w)
    if conv.bias is not None:
        c.bias.data.copy_(conv.bias.detach()[out] if out is not None else conv.bias.detach())
    return c


def _err(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((a(x) - b(x)) ** 2).mean())


def test_removed_channels_that_are_combinations_of_kept_ones_reconstruct_exactly():
    torch.manual_seed(0)
    a, b = nn.Conv2d(3, 6, 1, bias=False), nn.Conv2d(6, 4, 3, padding=1)
    with torch.no_grad():  # channels 3..5 of a's output are linear combinations of channels 0..2
        a.weight[3:] = torch.einsum("rk,kcij->rcij", torch.randn(3, 3), a.weight[:3])
    dense = nn.Sequential(a, b).eval()
    pruned = nn.Sequential(_sub(a, out=[0, 1, 2]), _sub(b, ins=[0, 1, 2])).eval()
    x = torch.randn(16, 3, 6, 6)
    assert _err(pruned, dense, x) > 1e-2
    report = recover_(pruned, dense, x, LSTSQ)
    assert report.accepted == ["1"]
    torch.testing.assert_close(pruned(x), dense(x), atol=1e-4, rtol=1e-4)  # float precision
    assert report.layers[-1].after is not None and report.layers[-1].after < 1e-6


def _cut_resnet(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A small trained-like ResNet (random BN affine, real running stats) and its planned cut (one block
    removed, every group halved)."""
    from distillprune.prune.channels import enumerate_groups
    from distillprune.prune.config import WidthConfig
    from distillprune.prune.depth import remove_blocks
    from distillprune.prune.groups import apply_widths

    torch.manual_seed(seed)
    m = ResNet((8, 16), (2, 2), 10)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
    x = torch.randn(64, 3, 8, 8)
    m.train()(x)
    dense = copy.deepcopy(m.eval())
    w = WidthConfig(ratio=0.5, round_to=4, importance="l2")
    remove_blocks(m, ["layer1.1"])
    groups = enumerate_groups(m, x[:1], w, 10).groups
    apply_widths(m, x[:1], w, 10, {g.root: g.size // 2 for g in groups})
    return m, dense, x


def test_reconstruction_never_increases_the_calibration_error():
    pruned, dense, x = _cut_resnet()
    before = _err(pruned, dense, x)
    report = recover_(pruned, dense, x, RecoveryConfig())
    assert report.accepted
    for r in report.layers:
        if r.accepted:
            assert r.after is not None and r.before is not None and r.after < r.before
    assert _err(pruned, dense, x) < 0.5 * before


def test_a_downsampling_block_absorbs_the_stream_through_its_projection_shortcut():
    from distillprune.prune.recovery.targets import layer_targets

    pruned, dense, x = _cut_resnet()  # layer1.1 removed: layer2.0 (conv + BN shortcut) reads a cut stream
    targets, _ = layer_targets(pruned, dense, x[:1], "downstream", stream=True)
    paths = [t.path for t in targets]
    last = targets[paths.index("layer2.0.conv2")]
    assert last.stream is not None and last.stream.shortcut == "layer2.0.shortcut"
    assert paths.index("layer2.0.conv2") > paths.index("layer2.0.shortcut.0")  # fitted on the re-fit shortcut

    def block_error(stream: bool) -> float:
        m = copy.deepcopy(pruned)
        recover_(m, dense, x, RecoveryConfig(stream=stream, scope="consumers"))
        got, want = (capture(n, x, outputs=["layer2.0"])["out:layer2.0"] for n in (m, dense))
        return float(((got - want[:, last.out]) ** 2).mean())  # on the channels the cut kept

    assert block_error(True) < 0.9 * block_error(False)


def test_a_solve_that_would_raise_the_error_keeps_the_old_weights():
    pruned, dense, x = _cut_resnet()
    old = copy.deepcopy(pruned.state_dict())
    report = recover_(pruned, dense, x, RecoveryConfig(damp=1e6))  # the ridge crushes most solutions
    rejected = [r.layer for r in report.layers if "does not lower" in (r.skipped or "")]
    assert len(rejected) > len(report.accepted)
    for layer in rejected:
        assert torch.equal(pruned.get_submodule(layer).weight, old[layer + ".weight"]), layer


def test_recovery_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        pruned, dense, x = _cut_resnet()
        recover_(pruned, dense, x, RecoveryConfig(positions_per_image=8), seed=3)
        runs.append(pruned.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_a_depthwise_layer_is_skipped_and_reported():
    torch.manual_seed(0)
    a, c, dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    dense = nn.Sequential(a, c, dw).eval()
    keep = [0, 2, 4, 6]
    pruned = nn.Sequential(_sub(a, out=keep), _sub(c, ins=keep), _sub(dw, groups=6)).eval()
    report = recover_(pruned, dense, torch.randn(8, 3, 5, 5), LSTSQ)  # downstream of the cut: c, then dw
    assert "grouped/depthwise" in report.skipped["2"]
    assert "1" in report.accepted


def test_too_few_rows_is_reported_ill_posed():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 40), nn.Linear(40, 3)
    dense = nn.Sequential(a, nn.ReLU(), b).eval()
    keep = list(range(20))
    a2, b2 = nn.Linear(5, 20), nn.Linear(20, 3)
    a2.weight.data, a2.bias.data = a.weight.data[keep].clone(), a.bias.data[keep].clone()
    b2.weight.data, b2.bias.data = b.weight.data[:, keep].clone(), b.bias.data.clone()
    report = recover_(nn.Sequential(a2, nn.ReLU(), b2).eval(), dense, torch.randn(6, 5), LSTSQ)
    assert "ill-posed" in report.skipped["2"]


def test_bias_compensation_reduces_the_error_without_data():
    torch.manual_seed(0)
    a, bn, b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)
    bn.bias.data.uniform_(0.5, 1.0)  # positive means after the ReLU: removing a channel shifts the output
    dense = nn.Sequential(a, bn, nn.ReLU(), b)
    x = torch.randn(256, 3, 8, 8)
    bn.momentum = None
    dense.train()(x)
    dense.eval()
    keep = [0, 1, 2, 3]
    bn2 = nn.BatchNorm2d(4).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn2, name).data.copy_(getattr(bn, name).data[keep])
    pruned = nn.Sequential(_sub(a, out=keep), bn2, nn.ReLU(), _sub(b, ins=keep)).eval()
    before = _err(pruned, dense, x)
    report = recover_(pruned, dense, None, RecoveryConfig(method="bias"), example=x[:1])
    assert report.method == "bias" and report.accepted == ["3"]
    assert _err(pruned, dense, x) < 0.5 * before


def test_relu_gaussian_mean_matches_sampling():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 0.5, 2.0])
    samples = (mean + std * torch.randn(200_000, 3)).clamp_min(0).mean(0)
    torch.testing.assert_close(relu_gaussian_mean(mean, std), samples, atol=1e-2, rtol=1e-2)


def test_channel_map_is_read_from_the_weights():
    torch.manual_seed(0)
    w0 = torch.randn(6, 5, 3, 3)
    out, ins = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])
    got = kept_channels(w0, w0[out][:, ins])
    assert got is not None and torch.equal(got[0], out) and torch.equal(got[1], ins)
    assert kept_channels(w0, torch.randn(3, 3, 3, 3)) is None  # not a cut of w0


def test_capture_stops_after_the_requested_layer():
    calls = []
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].register_forward_hook(lambda m, a, o: calls.append(1))
    got = capture(model, torch.randn(1, 2), inputs=["1"])
    assert "in:1" in got and calls == []


def _session(recovery: dict | None, model: nn.Module) -> PruneSession:
    cfg = PruneConfig(width={"ratio": 0.5, "round_to": 4, "importance": "l2"}, recovery=recovery)
    return PruneSession(model, cfg, random_bundle(shape=(3, 8, 8)), context=Context(loader=LoaderOptions(32)))


def test_the_session_recovers_after_a_cut_as_the_verb_does():
    _, dense, _ = _cut_resnet()
    cfg = {"method": "lstsq", "positions_per_image": 16, "calib_samples": 64}
    s = _session(cfg, copy.deepcopy(dense))
    report = s.run()
    assert len(report.recovery) == 1 and report.recovery[0].accepted
    assert any(line.startswith("recovery (lstsq)") for line in report.log)
    plain = _session({"method": "none"}, copy.deepcopy(dense))
    plain.run()
    calib = [x for x, _ in plain.calibration(64)]  # the session's seeded batches (BN off: lstsq keeps them)
    recover_(plain.model, dense, calib, RecoveryConfig(**cfg), seed=0)
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(v, plain.model.state_dict()[k], msg=k)


def test_recovery_config_is_strict_and_defaults_to_on_with_a_target():
    with pytest.raises(DistillpruneError):
        validate(PruneConfig, {"width": {"ratio": 0.5}, "recovery": {"methd": "lstsq"}}, where="test")
    assert PruneConfig(width={"ratio": 0.5}).recovery_config() is None
    planned = PruneConfig(width={"importance": "l2"}, target={"macs_ratio": 2.0})
    assert planned.recovery_config() is not None and planned.recovery_config().method == "lstsq"


def test_relu_aware_targets_are_read_from_the_graph_and_never_raise_the_error_after_the_relu():
    from distillprune.prune.recovery.relu import gated_targets, relu_layers

    pruned, dense, x = _cut_resnet()
    gates = relu_layers(pruned)
    assert gates["layer1.0.conv1"].stream is False and gates["layer2.0.conv2"].stream is True
    assert "fc" not in gates  # no ReLU after the head
    # rows the dense ReLU closes: the fit's value where it is closed too, else the threshold; open rows keep y
    y, fit, theta, a = (
        torch.tensor([[-2.0, -1.0, 3.0]]),
        torch.tensor([[-5.0, 1.0, 0.0]]),
        torch.zeros(1, 3),
        torch.ones(3),
    )
    assert torch.equal(gated_targets(y, fit, theta, a), torch.tensor([[-5.0, 0.0, 3.0]]))

    def after_relu(relu: bool) -> tuple[float, list[str]]:
        m = copy.deepcopy(pruned)
        report = recover_(m, dense, x, RecoveryConfig(relu=relu))
        return _err(m, dense, x), [r.layer for r in report.layers if r.gated]  # the logits

    (plain, none), (gated, layers) = after_relu(False), after_relu(True)
    assert none == [] and layers  # the gated solve won somewhere
    assert gated < plain
    for r in recover_(copy.deepcopy(pruned), dense, x, RecoveryConfig(relu=True)).layers:
        if r.accepted:  # each kept solution errs less than the old weights (after the ReLU where gated)
            assert r.after is not None and r.before is not None and r.after < r.before
