"""Kernel Inception Distance (Bińkowski et al. 2018).

KID is the squared maximum mean discrepancy (MMD^2) between two feature sets under the
cubic polynomial kernel k(x, y) = (x . y / d + 1)^3, d the feature dimension, estimated
without bias. For subsets X = {x_i} and Y = {y_j} of equal size m:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
            + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
            - 2/m^2      sum_{i, j}   k(x_i, y_j)

Unlike FID it is unbiased, so small sample sets are comparable, and it can be negative
(by chance, when both sets come from one distribution). It is averaged over random
subsets (each drawn without replacement) to bound the cost of the m x m kernels.
"""

from __future__ import annotations

import numpy as np


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    sum_xx = k_xx.sum() - np.trace(k_xx)  # i != j
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float(sum_xx / (m * (m - 1)) + sum_yy / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1, features2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over ``num_subsets`` subsets.

    ``subset_size`` is clipped to the smaller set; each subset draws that many rows
    without replacement from each set (NumPy ``default_rng(seed)``, so the result is
    reproducible). The std is over subsets (ddof=0), a spread, not a standard error.
    float64 throughout.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(
            f"features must be 2-D [N, D] with the same D, got {f1.shape} and {f2.shape}"
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"need subsets of at least 2 samples, got {m}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        values[s] = _polynomial_mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())
