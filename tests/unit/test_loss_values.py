"""Each distillation loss against a reference computed by hand (numpy, written out from the paper's
formula with explicit loops where the library vectorises) on small fixed tensors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distillprune.distill.losses import Outputs
from distillprune.distill.losses.attention import AttentionLoss
from distillprune.distill.losses.crd import CRDLoss
from distillprune.distill.losses.dist import DISTLoss
from distillprune.distill.losses.dkd import DKDLoss
from distillprune.distill.losses.kd import KDLoss
from distillprune.distill.losses.pkt import PKTLoss
from distillprune.distill.losses.rkd import RKDLoss
from distillprune.errors import DistillpruneError

RNG = np.random.default_rng(0)
ZS = RNG.normal(size=(4, 5)) * 2  # student logits: batch 4, 5 classes
ZT = RNG.normal(size=(4, 5)) * 2
Y = np.array([1, 0, 4, 2])
FS = RNG.normal(size=(4, 3))  # penultimate features, student width 3
FT = RNG.normal(size=(4, 6))  # teacher width 6


def t32(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of sum_c p log(p / q)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def huber(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


# ---------------------------------------------------------------- KD with logit standardisation
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_kd_standardized_matches_zscore_then_kd(t):
    def z(a):
        return (a - a.mean(1, keepdims=True)) / (a.std(1, ddof=1, keepdims=True) + 1e-7)

    want = t * t * kl(softmax(z(ZT) / t), softmax(z(ZS) / t))
    got = KDLoss(temperature=t, alpha=1.0, standardize=True)(Outputs(t32(ZS)), Outputs(t32(ZT)), None)
    assert float(got) == pytest.approx(want, rel=1e-4)
    # invariant to each logit vector's shift and scale, which plain KD is not
    shifted = Outputs(t32(ZT * 3.0 + 1.5))
    same = KDLoss(temperature=t, alpha=1.0, standardize=True)(Outputs(t32(ZS)), shifted, None)
    assert float(same) == pytest.approx(want, rel=1e-4)
    plain = KDLoss(temperature=t, alpha=1.0)(Outputs(t32(ZS)), shifted, None)
    assert float(plain) != pytest.approx(want, rel=1e-2)


def test_kd_standardized_keeps_raw_logits_in_ce():
    got = KDLoss(temperature=2.0, alpha=0.25, standardize=True)(Outputs(t32(ZS)), Outputs(t32(ZT)), torch.tensor(Y))
    kd = float(KDLoss(temperature=2.0, alpha=1.0, standardize=True)(Outputs(t32(ZS)), Outputs(t32(ZT)), None))
    ce = float(-np.mean(np.log(softmax(ZS)[np.arange(4), Y])))
    assert float(got) == pytest.approx(0.25 * kd + 0.75 * ce, rel=1e-5)


# ---------------------------------------------------------------- attention transfer
def np_at(a: np.ndarray, p: float) -> np.ndarray:
    m = (np.abs(a) ** p).mean(axis=1).reshape(len(a), -1)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_at_matches_paper_code():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 4, 4))
    gs, gt = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 7, 2, 2))
    loss = AttentionLoss([["a", "a"], ["b", "b"]], p=2.0, beta=1000.0)
    s, t = (
        Outputs(t32(ZS[:2]), {"a": t32(fs), "b": t32(gs)}),
        Outputs(t32(ZT[:2]), {"a": t32(ft), "b": t32(gt)}),
    )
    loss.setup(s, t)
    want = 1000.0 / 2 * sum(((np_at(x, 2) - np_at(y, 2)) ** 2).mean() for x, y in [(fs, ft), (gs, gt)])
    assert float(loss(s, t, None)) == pytest.approx(want, rel=1e-5)


def test_at_pools_the_larger_map_and_supports_p():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 2, 2))
    loss = AttentionLoss(["f"], p=1.0, beta=2.0)
    s, t = Outputs(t32(ZS[:2]), {"f": t32(fs)}), Outputs(t32(ZT[:2]), {"f": t32(ft)})
    m = np.abs(fs).mean(axis=1)  # (2, 4, 4) -> 2x2 average pooling
    pooled = m.reshape(2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(2, -1)
    qs = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    want = ((qs - np_at(ft, 1.0)) ** 2).mean()  # beta / 2 = 1
    assert float(loss(s, t, None)) == pytest.approx(want, rel=1e-5)


def test_at_needs_feature_maps():
    loss = AttentionLoss(["f"])
    with pytest.raises(DistillpruneError, match="feature maps"):
        loss.setup(Outputs(t32(ZS), {"f": t32(FS)}), Outputs(t32(ZT), {"f": t32(FT)}))


# ---------------------------------------------------------------- RKD
def np_rkd(es: np.ndarray, et: np.ndarray, wd: float, wa: float) -> float:
    n = len(es)

    def psi_d(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        mu = sum(d[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return d / mu

    def unit(v):
        nv = np.linalg.norm(v)
        return v / nv if nv > 0 else v * 0

    def psi_a(e):  # cos of the angle at vertex j, for every (i, j, k)
        return np.array([unit(e[i] - e[j]) @ unit(e[k] - e[j]) for i, j, k in itertools.product(range(n), repeat=3)])

    return wd * huber(psi_d(es) - psi_d(et)).mean() + wa * huber(psi_a(es) - psi_a(et)).mean()


@pytest.mark.parametrize("wd,wa", [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)])
def test_rkd_on_tapped_features_matches_loops(wd, wa):
    loss = RKDLoss(tap="pool", distance_weight=wd, angle_weight=wa)
    s, t = Outputs(t32(ZS), {"pool": t32(FS)}), Outputs(t32(ZT), {"pool": t32(FT)})
    loss.setup(s, t)
    assert float(loss(s, t, None)) == pytest.approx(np_rkd(FS, FT, wd, wa), rel=1e-4)


def test_rkd_on_logits_without_tap_and_tiny_batches():
    assert float(RKDLoss()(Outputs(t32(ZS)), Outputs(t32(ZT)), None)) == pytest.approx(np_rkd(ZS, ZT, 25, 50), rel=1e-4)
    one = RKDLoss()(Outputs(t32(ZS[:1])), Outputs(t32(ZT[:1])), None)
    assert float(one) == 0.0


# ---------------------------------------------------------------- PKT
def test_pkt_matches_authors_formula():
    def cond(e):
        n = len(e)
        k = np.array(
            [[(e[i] @ e[j] / np.linalg.norm(e[i]) / np.linalg.norm(e[j]) + 1) / 2 for j in range(n)] for i in range(n)]
        )
        return k / k.sum(axis=1, keepdims=True)

    p, q = cond(FT), cond(FS)
    want = np.mean(p * np.log((p + 1e-7) / (q + 1e-7)))
    loss = PKTLoss(tap=["s_pool", "t_pool"])
    s, t = Outputs(t32(ZS), {"s_pool": t32(FS)}), Outputs(t32(ZT), {"t_pool": t32(FT)})
    assert loss.taps == [("s_pool", "t_pool")]
    assert float(loss(s, t, None)) == pytest.approx(want, rel=1e-4)


# ---------------------------------------------------------------- DKD
def np_dkd(zs, zt, y, alpha, beta, t) -> float:
    tckd, nckd = [], []
    for i in range(len(y)):
        ps, pt = softmax(zs[i] / t), softmax(zt[i] / t)
        bs, bt = np.array([ps[y[i]], 1 - ps[y[i]]]), np.array([pt[y[i]], 1 - pt[y[i]]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        rest = [c for c in range(zs.shape[1]) if c != y[i]]
        qs, qt = softmax(zs[i, rest] / t), softmax(zt[i, rest] / t)
        nckd.append(np.sum(qt * np.log(qt / qs)))
    return t * t * (alpha * np.mean(tckd) + beta * np.mean(nckd))


@pytest.mark.parametrize("alpha,beta,t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0)])
def test_dkd_matches_tckd_plus_nckd(alpha, beta, t):
    got = DKDLoss(alpha=alpha, beta=beta, temperature=t)(Outputs(t32(ZS)), Outputs(t32(ZT)), torch.tensor(Y))
    assert float(got) == pytest.approx(np_dkd(ZS, ZT, Y, alpha, beta, t), rel=1e-4)


def test_dkd_with_alpha_equal_beta_is_not_kd_but_decomposes_it():
    # the paper's identity: KD = TCKD + (1 - p_t^y) NCKD (DKD with alpha = beta = 1 drops that factor)
    t = 1.0
    kd = t * t * kl(softmax(ZT / t), softmax(ZS / t))
    tckd = np_dkd(ZS, ZT, Y, 1, 0, t)
    pt = softmax(ZT / t)
    nckd_i = [
        t
        * t
        * np.sum(
            softmax(ZT[i, [c for c in range(5) if c != Y[i]]] / t)
            * np.log(
                softmax(ZT[i, [c for c in range(5) if c != Y[i]]] / t)
                / softmax(ZS[i, [c for c in range(5) if c != Y[i]]] / t)
            )
        )
        for i in range(4)
    ]
    weighted = np.mean([(1 - pt[i, Y[i]]) * nckd_i[i] for i in range(4)])
    assert kd == pytest.approx(tckd + weighted, rel=1e-6)


def test_dkd_without_labels_is_a_clear_error():
    with pytest.raises(DistillpruneError, match="needs labels"):
        DKDLoss()(Outputs(t32(ZS)), Outputs(t32(ZT)), None)


# ---------------------------------------------------------------- DIST
def test_dist_matches_pearson_relations():
    t, beta, gamma = 4.0, 2.0, 3.0
    ys, yt = softmax(ZS / t), softmax(ZT / t)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(4)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(5)])
    want = t * t * (beta * inter + gamma * intra)
    got = DISTLoss(beta=beta, gamma=gamma, temperature=t)(Outputs(t32(ZS)), Outputs(t32(ZT)), None)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_dist_is_invariant_to_affine_changes_of_teacher_probabilities():
    # Pearson correlation ignores shift and scale: the point of DIST over KL
    loss = DISTLoss(beta=1.0, gamma=0.0, temperature=1.0)
    zs = t32(ZS)
    p = torch.softmax(zs, 1)
    # teacher logits whose softmax is an affine map of the student's per sample: log(0.5 p + 0.5 / C)
    zt = torch.log(0.5 * p + 0.1)
    assert float(loss(Outputs(zs), Outputs(zt), None)) == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- CRD
def _identity_heads(loss: CRDLoss) -> None:
    with torch.no_grad():
        for head in (loss.head_s, loss.head_t):
            head.weight.copy_(torch.eye(head.out_features, head.in_features))
            head.bias.zero_()


def np_infonce(anchor, positive, queue, tau) -> float:
    out = []
    for i in range(len(anchor)):
        logits = [anchor[i] @ positive[j] / tau for j in range(len(positive))]
        logits += [anchor[i] @ q / tau for q in queue]
        logits = np.array(logits)
        out.append(-(logits[i] - np.log(np.exp(logits).sum())))
    return float(np.mean(out))


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_crd_infonce_both_directions_with_queue():
    tau = 0.5
    fs, ft = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    fs2, ft2 = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    loss = CRDLoss(tap="f", dim=3, queue_size=6, temperature=tau)
    s, t = Outputs(t32(ZS), {"f": t32(fs)}), Outputs(t32(ZT), {"f": t32(ft)})
    loss.setup(s, t)
    _identity_heads(loss)
    v, u = unit_rows(fs), unit_rows(ft)
    first = float(loss(s, t, None).detach())  # empty queue: in-batch negatives only
    assert first == pytest.approx(np_infonce(v, u, [], tau) + np_infonce(u, v, [], tau), rel=1e-5)
    assert int(loss.queue_len) == 4
    np.testing.assert_allclose(loss.queue_t[:4].numpy(), u, rtol=1e-5, atol=1e-6)
    s2, t2 = Outputs(t32(ZS), {"f": t32(fs2)}), Outputs(t32(ZT), {"f": t32(ft2)})
    v2, u2 = unit_rows(fs2), unit_rows(ft2)
    second = float(loss(s2, t2, None).detach())  # the first batch is now in the queues
    assert second == pytest.approx(np_infonce(v2, u2, list(u), tau) + np_infonce(u2, v2, list(v), tau), rel=1e-5)
    # FIFO of 6: the second batch's first two rows fill it, the last two overwrite the oldest
    assert int(loss.queue_len) == 6 and int(loss.queue_ptr) == 2
    np.testing.assert_allclose(loss.queue_t[:2].numpy(), u2[2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.queue_s[4:6].numpy(), v2[:2], rtol=1e-5, atol=1e-6)


def test_crd_queue_is_frozen_in_eval_and_under_no_grad():
    loss = CRDLoss(dim=4, queue_size=8)
    s, t = Outputs(t32(ZS)), Outputs(t32(ZT))
    loss.setup(s, t)
    with torch.no_grad():
        loss(s, t, None)
    loss.eval()
    loss(s, t, None)
    assert int(loss.queue_len) == 0
    loss.train()
    loss(s, t, None).backward()  # the in-place enqueue must not break the backward pass
    assert int(loss.queue_len) == 4
    assert loss.head_s.weight.grad is not None and loss.head_t.weight.grad is not None
