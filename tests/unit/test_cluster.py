"""Weight clustering: k shared values per layer, centroid gradients are the summed weight gradients,
pruned zeros stay zero, and the packed file round-trips and is honestly small."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compress_helpers import trained
from torch import nn

import distillprune as dp
from distillprune.cluster import WeightClustering, kmeans_1d, load_packed, pack, save_packed, sizes, unpack
from distillprune.cluster.pack import index_bits, pack_bits, unpack_bits
from distillprune.errors import CompressionError


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(200, generator=g) * 0.01 + c for c in (-1.0, 0.5, 2.0)])
    c, idx = kmeans_1d(w, 3)
    assert torch.allclose(c, torch.tensor([-1.0, 0.5, 2.0]), atol=0.01)
    assert torch.equal(idx, torch.arange(3).repeat_interleave(200))


def test_each_layer_holds_at_most_k_values_and_pruned_zeros_stay():
    model = trained()
    dp.prune_(model, {"unstructured": {"sparsity": 0.5}}, dp.Examples(torch.zeros(1, 1, 8, 8), 10))
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    wc = WeightClustering(model, dp.ClusterConfig(k=16))
    wc.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):  # fine-tune: only centroids (and BN / biases) move
        opt.zero_grad()
        model(torch.randn(8, 1, 8, 8)).square().mean().backward()
        opt.step()
    clustered = wc.finalize()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert len(torch.unique(m.weight)) <= 16, name
            assert f"{name}.weight" in clustered
        if name in zeros:
            assert torch.equal(m.weight == 0, zeros[name]) or bool((m.weight[zeros[name]] == 0).all()), name


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    ref = nn.Linear(6, 4)
    wc = WeightClustering(nn.Sequential(lin), dp.ClusterConfig(k=4, keep_zeros=False))
    wc.apply()
    ref.weight.data, ref.bias.data = lin.weight.detach().clone(), lin.bias.detach().clone()
    x = torch.randn(3, 6)
    lin(x).sum().backward()
    ref(x).sum().backward()
    idx = lin.parametrizations.weight[0].idx
    want = torch.zeros(4).scatter_add_(0, idx.flatten(), ref.weight.grad.flatten())
    assert torch.allclose(lin.parametrizations.weight.original.grad, want, atol=1e-6)


@pytest.mark.parametrize("k,bits", [(16, 4), (32, 5), (256, 8), (2, 1)])
def test_bit_packing(k: int, bits: int):
    assert index_bits(k) == bits
    idx = torch.randint(0, k, (1001,)).numpy()
    data = pack_bits(idx, bits)
    assert len(data) == -(-1001 * bits // 8)
    assert (unpack_bits(data, 1001, bits) == idx).all()


def test_packed_file_round_trips_and_is_8x_smaller(tmp_path: Path):
    model = dp.build_model("resnet20", 10, (3, 16, 16))
    dp.prune_(model, {"unstructured": {"sparsity": 0.5}}, dp.Examples(torch.zeros(1, 3, 16, 16), 10))
    clustered = dp.cluster_(model, {"k": 16}).clustered
    sd = model.state_dict()
    info = save_packed(tmp_path / "m.xz", sd, clustered)
    back = load_packed(tmp_path / "m.xz")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert info["file_bytes"] == (tmp_path / "m.xz").stat().st_size
    assert info["dense_fp32_bytes"] / info["file_bytes"] >= 8
    assert info["packed_lzma_bytes"] < info["packed_bytes"] < info["dense_fp32_bytes"] / 6
    blob, info2 = sizes(sd, clustered)
    assert blob == pack(sd, clustered) and info2["packed_bytes"] == len(blob)


def test_bad_inputs():
    with pytest.raises(CompressionError, match="not a distillprune"):
        unpack(b"garbage")
    with pytest.raises(CompressionError, match="no Conv2d/Linear layer"):
        dp.cluster_(trained(), {"layers": {"include": ["bn*"]}})
    with pytest.raises(CompressionError, match="more than k=4"):
        pack({"w": torch.arange(10.0)}, {"w": 4})
