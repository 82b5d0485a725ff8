"""The recovery engine's least-squares core."""

import torch

from distillprune.prune.recovery import Gram, ridge_solve


def test_exact_linear_map_is_recovered_from_batches():
    torch.manual_seed(0)
    x = torch.randn(600, 7)
    w, b = torch.randn(7, 4), torch.randn(4)
    y = x @ w + b
    g = Gram(7, 4, bias=True)
    for chunk in range(0, 600, 200):
        g.add(x[chunk : chunk + 200], y[chunk : chunk + 200])
    sol = g.solve(damp=1e-10)
    assert torch.allclose(sol[:7].float(), w, atol=1e-5)
    assert torch.allclose(sol[7].float(), b, atol=1e-5)
    assert g.residual(sol) < 1e-8


def test_dead_input_still_solves():
    x = torch.randn(100, 3)
    x[:, 1] = 0  # a channel that never fires: X^T X is singular
    y = x[:, :1] * 2
    sol = ridge_solve(x.T.double() @ x.double(), x.T.double() @ y.double(), damp=0.0)
    assert torch.isfinite(sol).all()
    assert abs(float(sol[0, 0]) - 2) < 1e-6
