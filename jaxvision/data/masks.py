"""Inpainting masks and the inpainting pipeline.

A mask is a float32 [H, W, 1] array, 1 on the hole (pixels to fill) and 0 on the known
pixels. It is a pure function of (kind, seed, index, H, W): the same example index and
seed give the same hole on every run, machine and resume, and the test split's holes
are the same for every method compared. Kinds:

* ``"centre"``: a box of half the image side in the middle (a quarter of the area);
* ``"boxes"``: 1 to 3 boxes, each side a random 1/4 to 1/2 of the image's;
* ``"strokes"``: free-form brush strokes (as in Yu et al. 2019's free-form masks): 1 to 4
  random polylines of 2 to 5 segments, brush radius 1/16 to 1/10 of the image side;
* ``"mixed"``: one of the three above, drawn per example.

The pipeline (``inpainting_batches``) wraps the library's batches (``train_iterator`` or
``eval_batches``) and adds, per example, the feature dict entries:

* ``"target"``: the original image (the batch's ``"image"``, in [-1, 1]);
* ``"hole"``: the mask [B, H, W, 1] (``"mask"`` is taken: eval batches use it for padding);
* ``"masked"``: the image with the hole set to 0 (mid grey), the generator's input
  together with ``"hole"`` as an extra channel (``model_input``).

Which index a mask gets: the example's position in the split for evaluation (the i-th
test image always gets the same hole), and its position in the run (step * batch + row)
for training, so every epoch sees new holes and a resumed run the same ones.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

KINDS = ("centre", "boxes", "strokes", "mixed")
_MASK_SALT = 0x1A5C  # keeps mask draws apart from other users of (seed, index) streams


def _rng(seed: int, index: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([_MASK_SALT, int(seed), int(index), KINDS.index(kind)])


def _box(rng, h, w, lo=0.25, hi=0.5):
    bh = max(1, int(round(h * rng.uniform(lo, hi))))
    bw = max(1, int(round(w * rng.uniform(lo, hi))))
    top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    return top, left, bh, bw


def _strokes(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hole = np.zeros((h, w), bool)
    side = min(h, w)
    for _ in range(rng.integers(1, 5)):
        radius = max(1.0, side * rng.uniform(1 / 16, 1 / 10))
        points = [rng.uniform((0, 0), (h - 1, w - 1))]
        for _ in range(rng.integers(2, 6)):
            angle, length = rng.uniform(0, 2 * np.pi), side * rng.uniform(0.15, 0.4)
            step = points[-1] + length * np.array([np.sin(angle), np.cos(angle)])
            points.append(np.clip(step, 0, (h - 1, w - 1)))
        for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
            # Distance of every pixel to the segment: a brush of `radius` along it.
            d = np.array([y1 - y0, x1 - x0])
            t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
            hole |= (yy - (y0 + t * d[0])) ** 2 + (xx - (x0 + t * d[1])) ** 2 <= radius ** 2
    return hole


def make_mask(kind: str, seed: int, index: int, height: int, width: int) -> np.ndarray:
    """The hole (float32 [H, W, 1], 1 = missing) of example `index` under `seed`."""
    if kind not in KINDS:
        raise ValueError(f"Unknown mask kind {kind!r}; choose one of {KINDS}.")
    if height < 4 or width < 4:
        raise ValueError(f"Masks need images of at least 4x4 px, got {height}x{width}.")
    rng = _rng(seed, index, kind)
    if kind == "mixed":
        kind = KINDS[rng.integers(0, 3)]
        rng = _rng(seed, index, kind)
    hole = np.zeros((height, width), bool)
    if kind == "centre":
        bh, bw = height // 2, width // 2
        top, left = (height - bh) // 2, (width - bw) // 2
        hole[top:top + bh, left:left + bw] = True
    elif kind == "boxes":
        for _ in range(rng.integers(1, 4)):
            top, left, bh, bw = _box(rng, height, width)
            hole[top:top + bh, left:left + bw] = True
    else:
        hole = _strokes(rng, height, width)
        if not hole.any():  # cannot happen with radius >= 1, but a hole must never be empty
            hole[height // 2, width // 2] = True
    return hole[..., None].astype(np.float32)


def make_masks(kind: str, seed: int, indices: Iterable[int], height: int, width: int) -> np.ndarray:
    """Masks [N, H, W, 1] of the examples `indices`."""
    return np.stack([make_mask(kind, seed, i, height, width) for i in indices])


def apply_mask(images: np.ndarray, hole: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Images with the hole set to `fill` (0 = mid grey in [-1, 1])."""
    return np.where(hole > 0.5, np.float32(fill), images).astype(np.float32)


def model_input(masked, hole):
    """G's (and D's condition) input: the masked image and the hole as one more channel."""
    import jax.numpy as jnp

    return jnp.concatenate([masked, hole.astype(masked.dtype)], axis=-1)


def add_masks(batch: dict, *, kind: str, seed: int, first_index: int) -> dict:
    """`batch` with "target", "hole" and "masked" added; row r's mask is example first_index + r's."""
    images = np.asarray(batch["image"], np.float32)
    n, h, w = images.shape[:3]
    hole = make_masks(kind, seed, range(first_index, first_index + n), h, w)
    return {**batch, "target": images, "hole": hole, "masked": apply_mask(images, hole)}


def inpainting_batches(batches: Iterable[dict], *, kind: str, seed: int, first_index: int = 0) -> Iterator[dict]:
    """The library's batches with holes: example j of the stream (counted from `first_index`)
    gets mask index first_index + j. Train: first_index = start_step * global batch."""
    if kind not in KINDS:
        raise ValueError(f"Unknown mask kind {kind!r}; choose one of {KINDS}.")
    index = first_index
    for batch in batches:
        out = add_masks(batch, kind=kind, seed=seed, first_index=index)
        index += out["image"].shape[0]
        yield out
