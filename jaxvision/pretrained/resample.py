"""Position embeddings at a new resolution: bilinear resampling of the patch grid.

A ViT's learned position embedding is a (1, prefix + gh * gw, D) table: an optional
CLS entry (``prefix`` = 1) followed by one entry per patch, row-major over the
(gh, gw) patch grid. Fine-tuning at another image size (or patch size) changes the
grid; the standard recipe (vision_transformer, big_vision) keeps the CLS entry aside,
reshapes the rest to (gh, gw, D), resamples it bilinearly to the new grid, and
concatenates the CLS entry back.

Pure NumPy (float64 internally); non-square grids on either side are fine.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["fit_run_params", "interpolation_matrix", "resample_grid", "resample_pos_embedding", "square_grid"]


def interpolation_matrix(old: int, new: int, *, align_corners: bool = True) -> np.ndarray:
    """(new, old) matrix of 1-D linear interpolation weights; each row sums to 1.

    align_corners=True maps the first and last samples onto each other (the corner
    samples are kept exactly): the convention of ``scipy.ndimage.zoom(order=1)``, which
    the official vision_transformer and big_vision use for position embeddings.
    align_corners=False maps pixel centres (``torch.nn.functional.interpolate``'s
    bilinear mode with ``align_corners=False``, without antialiasing).
    Equal sizes give the identity exactly.
    """
    if old < 1 or new < 1:
        raise ValueError(f"grid sizes must be positive, got {old} -> {new}")
    if old == new:
        return np.eye(new)
    if align_corners:
        pos = np.arange(new) * ((old - 1) / (new - 1)) if new > 1 else np.zeros(1)
    else:
        pos = (np.arange(new) + 0.5) * (old / new) - 0.5
    pos = np.clip(pos, 0.0, old - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, old - 1)
    frac = pos - lo
    weights = np.zeros((new, old))
    rows = np.arange(new)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def resample_grid(grid: np.ndarray, new_shape: Sequence[int], *, align_corners: bool = True) -> np.ndarray:
    """Bilinear resampling of a (gh, gw, D) array to (new_h, new_w, D), separably."""
    grid = np.asarray(grid)
    if grid.ndim != 3:
        raise ValueError(f"expected a (height, width, channels) grid, got shape {grid.shape}")
    new_h, new_w = (int(s) for s in new_shape)
    if (new_h, new_w) == grid.shape[:2]:
        return grid.copy()
    rows = interpolation_matrix(grid.shape[0], new_h, align_corners=align_corners)
    cols = interpolation_matrix(grid.shape[1], new_w, align_corners=align_corners)
    out = np.einsum("ph,hwd,qw->pqd", rows, grid.astype(np.float64), cols)
    return out.astype(grid.dtype)


def square_grid(num_tokens: int, what: str = "position embedding") -> tuple[int, int]:
    """(g, g) for a square grid of `num_tokens` patches, else a ValueError that says what to pass."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"{what} has {num_tokens} patch entries, which is not a square grid: pass the grid "
            "explicitly as (height, width) in patches (e.g. grid=(gh, gw) / source_grid=(gh, gw))"
        )
    return side, side


def resample_pos_embedding(
    posemb: np.ndarray,
    new_grid: Sequence[int],
    *,
    num_prefix: int = 1,
    old_grid: Sequence[int] | None = None,
    align_corners: bool = True,
) -> np.ndarray:
    """(1, num_prefix + old_h * old_w, D) -> (1, num_prefix + new_h * new_w, D).

    The first `num_prefix` entries (the CLS entry; 0 for GAP models) are kept aside
    unchanged; the patch entries are resampled bilinearly. `old_grid` defaults to a
    square grid. Resampling to the same grid returns an identical copy.
    """
    posemb = np.asarray(posemb)
    if posemb.ndim == 2:
        posemb = posemb[None]
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"expected a position embedding of shape (1, tokens, width), got {posemb.shape}")
    prefix, patches = posemb[:, :num_prefix], posemb[0, num_prefix:]
    old_grid = tuple(old_grid) if old_grid is not None else square_grid(patches.shape[0])
    if old_grid[0] * old_grid[1] != patches.shape[0]:
        raise ValueError(
            f"position embedding has {patches.shape[0]} patch entries (after {num_prefix} prefix "
            f"entries) but old_grid={old_grid} needs {old_grid[0] * old_grid[1]}"
        )
    grid = resample_grid(patches.reshape(*old_grid, -1), new_grid, align_corners=align_corners)
    return np.concatenate([prefix, grid.reshape(1, -1, grid.shape[-1])], axis=1)


def fit_run_params(source: Mapping, template: Mapping, *, grid: Sequence[int], num_prefix: int,
                   where: str = "the checkpoint") -> tuple[dict, list[str]]:
    """A jaxvision ViT's parameters (our own layout, e.g. a classifier run's) fitted to a
    head-less ViT `template` of the same architecture at another image size: the head and
    representation layer dropped, position embeddings resampled to `grid` (bilinear, corners
    aligned, `num_prefix` CLS entries kept aside), every other entry shape-checked.
    Returns (params as NumPy arrays, the resampled entries' descriptions)."""
    import jax

    source = {k: v for k, v in source.items() if k not in ("head", "pre_logits")}
    if jax.tree_util.tree_structure(template) != jax.tree_util.tree_structure(source):
        raise ValueError(f"the parameters of {where} do not fit the model (another architecture, or not a ViT): "
                         "build the model from the run's own model section")
    resampled = []

    def fit(path, want, have):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        have = np.asarray(have)
        if name.endswith("pos_embedding") and have.shape != tuple(want.shape):
            resampled.append(f"{name}: {have.shape} -> {tuple(want.shape)}")
            have = resample_pos_embedding(have, tuple(grid), num_prefix=num_prefix)
        if have.shape != tuple(want.shape):
            raise ValueError(f"{name} has shape {have.shape} in {where} but the model needs {tuple(want.shape)}")
        return have.astype(want.dtype)

    return jax.tree_util.tree_map_with_path(fit, template, source), resampled
