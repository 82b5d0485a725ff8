"""The one least-squares solver of the recovery engine: ridge regression from accumulated Gram matrices.

Every re-fit (a conv as im2col regression, a linear layer, an encoder's output projection) reduces to
``W* = argmin_W ||X W - Y||^2 + lam ||W||^2`` over calibration rows, solved in closed form from
``X^T X`` and ``X^T Y`` accumulated batch by batch (float64, so millions of rows add up without loss).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Gram:
    """Running ``X^T X``, ``X^T Y`` (and ``Y^T Y``, for the residual) over calibration batches.

    ``bias=True`` appends a column of ones to ``X`` so the solve fits an intercept too (the last row of the
    solution is the bias). ``products``: the dtype of each batch's products; float32 is ~3x faster on a CPU
    and loses nothing that matters over a few thousand rows, while the running sums stay float64.
    """

    def __init__(self, n_in: int, n_out: int, bias: bool = False, products: torch.dtype = torch.float64) -> None:
        self.bias, self.products = bias, products
        k = n_in + int(bias)
        self.xtx = torch.zeros(k, k, dtype=torch.float64)
        self.xty = torch.zeros(k, n_out, dtype=torch.float64)
        self.yty = torch.zeros((), dtype=torch.float64)
        self.rows = 0

    def add(self, x: Tensor, y: Tensor) -> None:
        """Add rows: ``x`` is (N, n_in), ``y`` is (N, n_out)."""
        x = x.detach().to(self.products)
        y = y.detach().to(self.products)
        if self.bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        self.xtx += (x.T @ x).cpu().to(torch.float64)
        self.xty += (x.T @ y).cpu().to(torch.float64)
        self.yty += (y.to(torch.float64) * y.to(torch.float64)).sum().cpu()
        self.rows += x.shape[0]

    def solve(self, damp: float = 1e-4) -> Tensor:
        return ridge_solve(self.xtx, self.xty, damp)

    def residual(self, w: Tensor) -> float:
        """``||X W - Y||^2 / rows`` for a solution ``w`` (float64): the calibration error of ``w``."""
        w = w.to(torch.float64)
        err = self.yty - 2 * (w * self.xty).sum() + (w * (self.xtx @ w)).sum()
        return float(err.clamp_min(0)) / max(self.rows, 1)


def ridge_solve(xtx: Tensor, xty: Tensor, damp: float = 1e-4) -> Tensor:
    """``(X^T X + lam I)^-1 X^T Y`` with ``lam = damp * mean(diag(X^T X))`` (relative, so the same ``damp``
    suits any input scale). Cholesky first; a matrix that is not positive definite even damped (a dead input)
    falls back to ``lstsq``, which returns the minimum-norm solution."""
    xtx = xtx.to(torch.float64)
    xty = xty.to(torch.float64)
    n = xtx.shape[0]
    lam = damp * float(torch.diagonal(xtx).mean().clamp_min(1e-12))
    a = xtx + lam * torch.eye(n, dtype=xtx.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(xty, chol)
    return torch.linalg.lstsq(a, xty, driver="gelsd").solution  # SVD-based: rank-deficient safe
