"""Depth pruning (whole residual blocks) and unstructured magnitude masks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from unit_helpers import randomise_bn, tiny_digits_cnn, tiny_resnet

from distillprune.distill.losses.kd import soft_kl
from distillprune.errors import DistillpruneError
from distillprune.prune.channels import classifier_layers
from distillprune.prune.depth import choose_blocks, removable_blocks, remove_block
from distillprune.prune.schedule import cubic_sparsity
from distillprune.prune.unstructured import MagnitudeMasks, prunable_weights


def resnet33():
    return randomise_bn(tiny_resnet(widths=(8, 16), blocks=(3, 3))).eval()


def batches(n=2, bs=8, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(bs, *shape, generator=g) for _ in range(n)]


# ---------------------------------------------------------------- depth
def test_removable_blocks_are_identity_shortcut_blocks():
    assert removable_blocks(tiny_digits_cnn()) == ["layer1.0", "layer1.1"]
    m = resnet33()
    got = removable_blocks(m)
    assert got == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2"]
    for path in got:
        assert isinstance(m.get_submodule(path).shortcut, nn.Identity)
    # the first block of stage 2 changes shape (stride 2, 8 -> 16 channels): never removable
    assert not isinstance(m.layer2[0].shortcut, nn.Identity)


def test_removable_blocks_understands_torchvision_style_blocks():
    class BasicBlock(nn.Module):  # same class name as torchvision's, downsample attribute
        def __init__(self, downsample):
            super().__init__()
            self.downsample = downsample

    net = nn.Sequential(BasicBlock(None), BasicBlock(nn.Conv2d(1, 1, 1)), BasicBlock(None))
    assert removable_blocks(net) == ["0", "2"]


def test_remove_block_keeps_shapes_and_identity():
    m = resnet33()
    x = torch.randn(2, 3, 8, 8)
    remove_block(m, "layer1.1")
    assert isinstance(m.layer1[1], nn.Identity)
    assert "layer1.1" not in removable_blocks(m)
    assert m(x).shape == (2, 10)


def test_remove_block_of_a_missing_path_raises():
    m = resnet33()
    n_modules = len(list(m.modules()))
    for path in ("layer1.9", "layer7.0", "nothing"):
        with pytest.raises(DistillpruneError, match="no block"):
            remove_block(m, path)
    assert len(list(m.modules())) == n_modules  # nothing was added on the way


@pytest.mark.parametrize("count", [1, 2, 5])
def test_choose_blocks_removes_exactly_n(count):
    m = resnet33().train()
    teacher = copy.deepcopy(m).eval()
    before = removable_blocks(m)
    chosen = choose_blocks(m, teacher, batches(), count)
    assert len(chosen) == count == len(set(chosen))
    assert set(chosen) <= set(before)
    for path in chosen:
        assert isinstance(m.get_submodule(path), nn.Identity)
    assert sorted(removable_blocks(m)) == sorted(set(before) - set(chosen))
    assert m.training  # mode restored
    assert m(torch.randn(3, 3, 8, 8)).shape == (3, 10)


def test_choose_blocks_picks_the_least_harmful_block():
    m = resnet33()
    # a block whose residual branch outputs exactly 0 is a no-op (relu(x + 0) = x for x >= 0): free to remove
    with torch.no_grad():
        m.layer2[2].bn2.weight.zero_()
        m.layer2[2].bn2.bias.zero_()
    teacher = copy.deepcopy(m)
    assert choose_blocks(m, teacher, batches(), 1) == ["layer2.2"]


def test_choose_blocks_greedy_matches_exhaustive_single_choice():
    m = resnet33()
    teacher = copy.deepcopy(m)
    xs = batches()
    scores = {}
    for path in removable_blocks(m):
        trial = copy.deepcopy(m)
        remove_block(trial, path)
        with torch.no_grad():
            scores[path] = sum(float(soft_kl(trial(x), teacher(x), 1.0)) for x in xs)
    assert choose_blocks(m, teacher, xs, 1) == [min(scores, key=scores.get)]


def test_choose_too_many_blocks_raises():
    m = tiny_digits_cnn()
    with pytest.raises(DistillpruneError, match="only 2 removable"):
        choose_blocks(m, copy.deepcopy(m), batches(shape=(1, 8, 8)), 3)
    assert removable_blocks(m) == ["layer1.0", "layer1.1"]  # nothing removed on the way


# ---------------------------------------------------------------- cubic schedule
def test_cubic_sparsity_schedule():
    final, steps = 0.8, 10
    vals = [cubic_sparsity(s, steps, final) for s in range(steps + 1)]
    assert vals[0] == 0.0
    assert vals[-1] == pytest.approx(final)
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))  # strictly increasing
    assert cubic_sparsity(5, 10, final) == pytest.approx(final * (1 - 0.5**3))
    # front-loaded: more than half of the final sparsity by the midpoint
    assert vals[5] > final / 2
    # clamped outside [0, steps]
    assert cubic_sparsity(-3, steps, final) == 0.0
    assert cubic_sparsity(25, steps, final) == pytest.approx(final)
    assert cubic_sparsity(1, 1, 0.5) == pytest.approx(0.5)


# ---------------------------------------------------------------- magnitude masks
def layer_sparsity(w: torch.Tensor) -> float:
    return float((w == 0).float().mean())


@pytest.mark.parametrize("target", [0.3, 0.5, 0.9])
def test_global_masks_reach_sparsity_and_keep_the_largest(target):
    m = resnet33()
    skip = classifier_layers(m, 10)
    masks = MagnitudeMasks(m, "global", skip)
    assert "fc.weight" not in masks.weights
    original = {n: w.detach().abs().clone() for n, w in masks.weights.items()}
    masks.update(target)
    assert masks.sparsity() == pytest.approx(target, abs=0.01)
    # global threshold: every kept weight is at least as large as every pruned one
    kept = torch.cat([original[n][masks.masks[n]] for n in original])
    pruned = torch.cat([original[n][~masks.masks[n]] for n in original])
    assert kept.min() >= pruned.max()
    # the classifier is skipped
    assert layer_sparsity(m.fc.weight) == 0.0


def test_global_and_layer_scopes_differ():
    per_layer = {}
    for scope in ("global", "layer"):
        m = resnet33()
        masks = MagnitudeMasks(m, scope)
        masks.update(0.5)
        assert masks.sparsity() == pytest.approx(0.5, abs=0.01)
        per_layer[scope] = {n: layer_sparsity(w) for n, w in masks.weights.items()}
    # layer scope: each layer at the target; global scope: spread unevenly across layers
    assert all(s == pytest.approx(0.5, abs=0.01) for s in per_layer["layer"].values())
    assert max(abs(s - 0.5) for s in per_layer["global"].values()) > 0.05


def test_masks_stay_applied_after_an_optimizer_step():
    m = resnet33().train()
    masks = MagnitudeMasks(m, "layer", classifier_layers(m, 10))
    masks.update(0.6)
    zeros = {n: (w == 0).clone() for n, w in masks.weights.items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        # the step revived pruned weights ...
        assert any((w[zeros[n]] != 0).any() for n, w in masks.weights.items())
        masks.apply(m)
        # ... and apply() puts the zeros back
        for n, w in masks.weights.items():
            assert (w[zeros[n]] == 0).all(), n
        assert masks.sparsity() == pytest.approx(0.6, abs=0.01)


def test_masks_zero_sparsity_is_a_no_op():
    m = resnet33()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    masks = MagnitudeMasks(m)
    masks.update(0.0)
    assert all(v.all() for v in masks.masks.values())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_prunable_weights_covers_conv_and_linear():
    m = resnet33()
    names = prunable_weights(m, [])
    assert "conv1.weight" in names and "fc.weight" in names and "layer2.0.shortcut.0.weight" in names
    assert not any("bn" in n for n in names)
    assert "fc.weight" not in prunable_weights(m, [m.fc])
