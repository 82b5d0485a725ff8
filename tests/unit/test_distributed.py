"""The distributed pieces that need no second process: batch shares, single-process no-ops, the
architecture hash, SyncBatchNorm's swap, which stages run on every rank. (Two processes: tests/distributed.)"""

from __future__ import annotations

import copy

import pytest
import torch
from unit_helpers import random_bundle, tiny_digits_cnn

from distillprune.core.history import HistoryOp
from distillprune.data.base import TensorLoader
from distillprune.distill.distiller import CrossEntropy
from distillprune.errors import DataError
from distillprune.prune.depth import remove_block
from distillprune.prune.history import RemoveBlockOp
from distillprune.recipes.schema import Recipe
from distillprune.train import RuntimeConfig
from distillprune.train import distributed as ddp
from distillprune.train.syncbn import SyncBatchNorm, restore_batchnorms, swap_batchnorms


def _loader(data, world: int = 1, rank: int = 0, batch: int = 10, **kw) -> TensorLoader:
    return TensorLoader(
        data.train,
        batch,
        data.mean,
        data.std,
        shuffle=True,
        crop_padding=1,
        hflip=True,
        seed=4,
        rank=rank,
        world_size=world,
        **kw,
    )


@pytest.mark.parametrize("world,batch,drop_last", [(2, 10, True), (3, 10, True), (3, 10, False), (2, 7, False)])
def test_ranks_together_see_the_single_process_batches(world, batch, drop_last):
    """Same permutation, same crops and flips: rank r's share is the r-th part of each global batch."""
    data = random_bundle(n_train=47, uint8=True)
    one = _loader(data, batch=batch, drop_last=drop_last)
    ranks = [_loader(data, world, r, batch=batch, drop_last=drop_last) for r in range(world)]
    for ld in (one, *ranks):
        ld.set_epoch(2)
    assert {len(ld) for ld in ranks} == {len(one)}
    for i, (x, y) in enumerate(one):
        parts = [b[i] for b in [list(ld) for ld in ranks]]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        sizes = [len(p[0]) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == one.batch_len(i)
    # order() is what each rank yields, in order (the teacher cache follows it)
    for r, ld in enumerate(ranks):
        got = torch.cat([y for _, y in ld])
        assert torch.equal(data.train.y[ld.order()], got), r


def test_a_batch_too_small_to_share_is_one_line():
    data = random_bundle(n_train=5)
    with pytest.raises(DataError, match="global batch"):
        TensorLoader(data.train, 8, data.mean, data.std, world_size=8, rank=0)


def test_single_process_helpers_are_no_ops():
    assert not ddp.is_active() and ddp.world_size() == 1 and ddp.is_rank0()
    assert ddp.broadcast_json({"a": [1, 2.5]}) == {"a": [1, 2.5]}
    assert ddp.all_gather_json("x") == ["x"]
    assert ddp.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert ddp.once(lambda: 7, encode=lambda v: v * 100) == 7  # no JSON round trip in one process
    history: list[HistoryOp] = []
    ddp.replicate(lambda: history.append(RemoveBlockOp("layer1.1")), history, lambda op: None)
    assert history == [RemoveBlockOp("layer1.1")]
    model = tiny_digits_cnn()
    par = ddp.DataParallel(model, CrossEntropy(), torch.device("cpu"), sync_bn=True)
    assert par.start() is model and par.loss_scale(3, 10) == 1.0 and not par.sync_bn
    ddp.check_same_architecture(model, [], "here")  # nothing to compare with


def test_architecture_fingerprint_sees_history_shapes_and_zeros():
    m = tiny_digits_cnn()
    base = ddp.architecture_fingerprint(m, [])
    assert ddp.architecture_fingerprint(copy.deepcopy(m), []) == base
    assert ddp.architecture_fingerprint(m, [RemoveBlockOp("layer1.1")]) != base
    pruned = copy.deepcopy(m)
    remove_block(pruned, "layer1.1")
    assert ddp.architecture_fingerprint(pruned, []) != base
    sparse = copy.deepcopy(m)
    with torch.no_grad():
        sparse.conv1.weight[0] = 0
    assert ddp.architecture_fingerprint(sparse, []) != base
    trained = copy.deepcopy(m)
    with torch.no_grad():
        trained.conv1.weight.mul_(1.5)  # values are not architecture
    assert ddp.architecture_fingerprint(trained, []) == base


def test_sync_batchnorm_swap_shares_tensors_and_restores_the_model():
    m = tiny_digits_cnn()
    bn = m.bn1
    keys = list(m.state_dict())
    swapped = swap_batchnorms(m)
    assert isinstance(m.bn1, SyncBatchNorm) and m.bn1.weight is bn.weight
    assert m.bn1.running_mean is bn.running_mean
    assert list(m.state_dict()) == keys  # checkpoints written while swapped keep their names
    x = torch.randn(6, 1, 8, 8)
    ref = copy.deepcopy(m)
    restore_batchnorms(swap_batchnorms(ref))
    m.train()
    ref.train()
    assert torch.allclose(m(x), ref(x))  # without a process group it is a plain BatchNorm
    restore_batchnorms(swapped)
    assert m.bn1 is bn and int(bn.num_batches_tracked) == 1  # the swapped module updated the original's stats
    assert not any(isinstance(mod, SyncBatchNorm) for mod in m.modules())


def test_only_stages_that_change_the_model_run_on_every_rank():
    def stage(**st):
        return Recipe.model_validate({"stages": [st]}).stages[0]

    assert stage(type="train", epochs=1).changes_model()
    assert stage(type="prune", width={"ratio": 0.5}).changes_model()
    assert stage(type="quantize", method="qat").changes_model()
    assert not stage(type="quantize", method="static").changes_model()
    assert not stage(type="export").changes_model()
    assert not stage(type="evaluate").changes_model()


def test_sync_bn_is_a_runtime_option_off_by_default():
    assert RuntimeConfig().sync_bn is False
    assert RuntimeConfig(sync_bn=True).sync_bn is True
