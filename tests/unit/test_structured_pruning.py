"""Structured (channel) pruning through the one path (enumerator -> uniform schedule -> cutter): physically
pruned == masked, replayable history, classifier kept, nearest rounding."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn
from unit_helpers import randomise_bn, tiny_resnet, uniform_cut, uniform_steps

from distillprune.errors import DistillpruneError
from distillprune.measure.metrics import count_params
from distillprune.prune.channels import classifier_layers
from distillprune.prune.config import WidthConfig
from distillprune.prune.criteria import accumulate_gradients
from distillprune.prune.history import ChannelsOp, replay_channels

EX = torch.zeros(1, 3, 8, 8)


def base_model(seed: int = 0) -> nn.Module:
    return randomise_bn(tiny_resnet(seed=seed, widths=(16, 32), blocks=(2, 2)), seed=seed).eval()


def conv_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def zero_group(group: tp.Group) -> None:
    """Zero what removing ``group``'s channels would remove (out-channel weights, biases and BN affine): with BN
    in eval mode the zeroed channels output exactly 0 downstream, so the masked model computes what the
    physically pruned one does."""
    for dep, idxs in group:
        layer = dep.target.module
        if getattr(dep.handler, "__name__", "") != "prune_out_channels":
            continue  # removing input channels needs nothing zeroed: those inputs are zero already
        idx = torch.as_tensor(list(idxs), dtype=torch.long)
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            layer.weight[idx] = 0
            if layer.bias is not None:
                layer.bias[idx] = 0


def mask_like(op: ChannelsOp, masked: nn.Module) -> int:
    """Zero on ``masked`` (the architecture the step cut) each group the step removed, through its own
    dependency graph; returns the group count."""
    dg = tp.DependencyGraph().build_dependency(masked, example_inputs=EX)
    roots = [(name, idxs) for name, is_out, idxs in op.entries if is_out]
    for name, idxs in roots:
        mod = masked.get_submodule(name)
        twin = dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, idxs)
        zero_group(twin)
    return len(roots)


def masked_step(pruned: nn.Module, cfg: WidthConfig, masked: nn.Module) -> int:
    """One uniform step on ``pruned``, its groups zeroed on ``masked``."""
    [op] = uniform_cut(pruned, cfg, EX)
    return mask_like(op, masked)


CASES = {
    "l2-round8": WidthConfig(ratio=0.4, importance="l2", round_to=8),
    "l1-round4": WidthConfig(ratio=0.5, importance="l1", round_to=4),
    "bn_scale-noround": WidthConfig(ratio=0.3, importance="bn_scale", round_to=None),
    "l2-global": WidthConfig(ratio=0.5, importance="l2", round_to=4, global_pruning=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_physically_pruned_equals_masked(case):
    cfg = CASES[case]
    original = base_model()
    pruned, masked = copy.deepcopy(original), copy.deepcopy(original)
    groups = masked_step(pruned, cfg, masked)
    assert groups >= 2  # the stem/stage-1 group, stage-2 group, and the inner convs of the blocks

    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_orig, y_pruned, y_masked = original(x), pruned(x), masked(x)
    torch.testing.assert_close(y_pruned, y_masked, atol=1e-5, rtol=0)
    # the zeroing was not a no-op: pruning changed the function
    assert (y_orig - y_masked).abs().max() > 1e-3

    # really smaller, and no architecture ends up with any "half-removed" channel
    assert count_params(pruned) < count_params(original)
    assert count_params(masked) == count_params(original)
    before, after = conv_channels(original), conv_channels(pruned)
    assert any(after[k] < before[k] for k in before)
    if cfg.round_to:
        for k, c in after.items():
            if after[k] != before[k]:
                assert c % cfg.round_to == 0, (k, c)
    # the classifier keeps its classes
    assert pruned.fc.out_features == 10
    assert pruned.fc.in_features == after["layer2.1.conv2"]


def test_round_to_changes_the_count():
    # 16 * (1 - 0.4) = 9.6 kept without rounding -> 9; with round_to=8 -> 8
    for round_to, want in ((None, 9), (8, 8)):
        m = base_model()
        uniform_cut(m, WidthConfig(ratio=0.4, round_to=round_to), EX)
        assert m.conv1.out_channels == want
        assert m.layer1[0].conv1.out_channels == want


@pytest.mark.parametrize(
    ("ratio", "want16", "want32"),
    [
        (0.1, 16, 32),  # 14 -> 16 and 28 -> 32 (rounding down would halve the 16-channel layers: 14 -> 8)
        (0.3, 8, 24),  # 11 -> 8 and 22 -> 24 (rounding down: 22 -> 16)
        (0.8, 8, 8),  # 3 -> 8 and 6 -> 8: a layer keeps at least one multiple, never all channels removed
    ],
)
def test_round_to_rounds_to_the_nearest_multiple(ratio, want16, want32):
    m = base_model()
    uniform_cut(m, WidthConfig(ratio=ratio, round_to=8, max_ratio=0.95), EX)
    assert m.layer1[0].conv1.out_channels == want16
    assert m.layer2[0].conv1.out_channels == want32
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_two_step_schedule_each_step_equals_masked():
    original = base_model(seed=3)
    pruned = copy.deepcopy(original)
    cfg = WidthConfig(ratio=0.5, round_to=4)
    x = torch.randn(8, 3, 8, 8)
    widths = [pruned.conv1.out_channels]
    masked = copy.deepcopy(pruned)
    for op in uniform_steps(pruned, cfg, EX, steps=2):  # (each step runs when the loop asks for it)
        assert op is not None
        mask_like(op, masked)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=0)
        widths.append(pruned.conv1.out_channels)
        masked = copy.deepcopy(pruned)
    # the linear schedule removes about half after the first step and all of the ratio after the second
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] == 8 and pruned.layer2[0].conv2.out_channels == 16


def test_prune_step_history_replays_to_identical_model():
    original = base_model(seed=5)
    work = copy.deepcopy(original)
    ops = uniform_cut(work, WidthConfig(ratio=0.5, round_to=4, importance="l1"), EX, steps=2)
    steps = [op.entries for op in ops]
    assert len(steps) == 2
    for entries in steps:
        assert entries, "each step removes something"
        for name, is_out, idxs in entries:
            assert isinstance(name, str) and isinstance(is_out, bool)
            assert idxs and all(type(i) is int for i in idxs)
    # JSON round trip: the history is plain data
    steps = json.loads(json.dumps(steps))

    fresh = copy.deepcopy(original)
    for entries in steps:
        replay_channels(fresh, EX, entries)
    assert shapes(fresh) == shapes(work)
    assert shapes(fresh) != shapes(original)
    # pruning keeps the surviving weights: the replayed model holds the same tensors already
    for k, v in work.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # and after loading the (possibly trained) weights the outputs are identical
    with torch.no_grad():
        for p in work.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh.load_state_dict(work.state_dict())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), work.eval()(x))


def test_replay_on_a_model_that_does_not_fit_raises():
    with pytest.raises(DistillpruneError, match="does not fit"):
        replay_channels(base_model(), EX, [["no_such_layer", True, [0, 1]]])


def test_classifier_is_never_pruned():
    m = base_model()
    assert classifier_layers(m, 10) == [m.fc]
    uniform_cut(m, WidthConfig(ratio=0.8, round_to=None, global_pruning=True), EX)
    assert m.fc.out_features == 10
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_exclude_patterns_keep_layers():
    m = base_model()
    cfg = WidthConfig(ratio=0.5, round_to=None, layers={"exclude": ["layer1.*.conv1"]})
    uniform_cut(m, cfg, EX)
    assert m.layer1[0].conv1.out_channels == 16 and m.layer1[1].conv1.out_channels == 16
    assert m.layer2[0].conv1.out_channels == 16  # not excluded: pruned from 32


def test_include_patterns_and_parents():
    m = base_model()
    cfg = WidthConfig(ratio=0.5, round_to=None, layers={"include": ["layer2"]})  # a parent covers its children
    uniform_cut(m, cfg, EX)
    assert m.layer1[0].conv1.out_channels == 16 and m.layer2[0].conv1.out_channels == 16
    with pytest.raises(DistillpruneError, match="'layer9' matches no layer"):
        uniform_cut(base_model(), WidthConfig(ratio=0.5, layers={"exclude": ["layer9"]}), EX)


def test_taylor_importance_with_accumulated_gradients():
    m = base_model()
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    m.train()
    accumulate_gradients(m, batches, lambda model, x, y: nn.functional.cross_entropy(model(x), y))
    assert m.training  # restored
    assert m.conv1.weight.grad is not None
    from distillprune.prune.channels import enumerate_groups
    from distillprune.prune.groups import apply_widths
    from distillprune.prune.schedule import Initial, uniform_keep

    cfg = WidthConfig(ratio=0.5, importance="taylor", round_to=None)
    found = enumerate_groups(m.eval(), EX, cfg, 10)  # scored from the gradients accumulated above
    apply_widths(m, EX, cfg, 10, uniform_keep(found.groups, Initial(), 0.5, cfg.max_ratio), groups=found)
    assert m.conv1.out_channels == 8
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_accumulate_gradients_does_not_move_bn_statistics():
    m = base_model().train()
    rm = m.bn1.running_mean.clone()
    accumulate_gradients(
        m,
        [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))],
        lambda model, x, y: nn.functional.cross_entropy(model(x), y),
    )
    assert torch.equal(m.bn1.running_mean, rm)
    assert m.training


def test_zero_group_zeroes_out_channels_only():
    m = base_model()
    dg = tp.DependencyGraph().build_dependency(m, example_inputs=EX)
    conv = m.layer1[0].conv1  # an inner conv: its group is conv1 out, bn1, conv2 in
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, [0, 3])
    w2_before = m.layer1[0].conv2.weight.clone()
    zero_group(group)
    assert conv.weight[[0, 3]].abs().sum() == 0 and conv.weight[[1, 2]].abs().sum() > 0
    assert m.layer1[0].bn1.weight[[0, 3]].abs().sum() == 0 and m.layer1[0].bn1.bias[[0, 3]].abs().sum() == 0
    assert m.layer1[0].bn1.weight[1] != 0
    assert torch.equal(m.layer1[0].conv2.weight, w2_before)  # in-channels are left alone
