"""Classical inpainting baseline: harmonic (diffusion) fill, in NumPy/SciPy.

The hole is filled with the solution of Laplace's equation, the known pixels as its
(Dirichlet) boundary: every hole pixel equals the mean of its 4-neighbours inside the
image (so at the image border the missing neighbours drop out: a zero-flux, Neumann,
border). It is the steady state of heat diffusion into the hole, and the smoothest fill
(it minimises the sum of squared differences between neighbours); it keeps no texture.
Any function linear in the pixel coordinates is harmonic, so a ramp is filled exactly.

One sparse linear system per image, the same for every channel (solved once per image
with all channels as right-hand sides).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg


def harmonic_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` [H, W, C] with the pixels where `hole` [H, W] or [H, W, 1] is set replaced by
    the harmonic interpolation of the known ones."""
    image = np.asarray(image, np.float64)
    if image.ndim != 3:
        raise ValueError(f"harmonic_fill takes one image [H, W, C], got shape {image.shape}")
    hole = np.asarray(hole).reshape(image.shape[:2]) > 0.5
    if hole.all():
        raise ValueError("The mask covers the whole image: there are no known pixels to fill from.")
    out = image.copy()
    n = int(hole.sum())
    if n == 0:
        return out
    h, w = hole.shape
    index = -np.ones((h, w), np.int64)
    index[hole] = np.arange(n)
    ys, xs = np.nonzero(hole)
    rows, cols, vals = [], [], []
    rhs = np.zeros((n, image.shape[2]))
    degree = np.zeros(n)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        me, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        degree[me] += 1
        unknown = hole[ny, nx]
        rows.append(me[unknown])
        cols.append(index[ny[unknown], nx[unknown]])
        vals.append(-np.ones(unknown.sum()))
        np.add.at(rhs, me[~unknown], image[ny[~unknown], nx[~unknown]])
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(degree)
    a = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    # A hole component with no known neighbour (impossible unless the hole is everything,
    # refused above) would make `a` singular.
    solution = scipy.sparse.linalg.splu(a).solve(rhs)
    out[hole] = solution
    return out


def harmonic_fill_batch(images: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """harmonic_fill over a batch [B, H, W, C], float32."""
    return np.stack([harmonic_fill(x, m) for x, m in zip(images, holes)]).astype(np.float32)
