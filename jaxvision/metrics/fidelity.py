"""Fidelity and diversity of generated samples, in any feature space (FID-Inception pool
features, a classifier's pre-logits): the "prdc" metrics and a classifier's class histogram.

* Improved precision and recall (Kynkaanniemi et al. 2019, k=3). Each sample gets a
  ball whose radius is the distance to its k-th nearest neighbour in its own set (the
  point itself excluded). precision = share of fakes inside at least one real ball
  (fidelity); recall = share of reals inside at least one fake ball (diversity).
* Density and coverage (Naeem et al. 2020, k=5, real balls only). density =
  1/(kM) sum over the M fakes of the number of real balls containing it (about 1 when
  fakes follow the real distribution, above 1 where fakes crowd dense real regions);
  coverage = share of reals whose ball contains at least one fake (1 - 1/2^k ~ 0.97 for
  identical distributions and large sets).
* The class histogram a classifier assigns to samples (share per class, entropy, the
  smallest and largest share) and, for conditional models, the classifier's accuracy
  against the class each sample was drawn for.

Balls are closed (distance <= radius), as in Kynkaanniemi et al.'s definition and code;
for continuous features ties have probability zero, so this only decides duplicates.

Precision: float64. Squared distances come from |x|^2 + |y|^2 - 2 x.y (one matrix
product per block, the only affordable route at 10k x 10k), which cancels: its error is
about eps * |x|^2, and every metric here is a threshold decision (distance <= radius),
so round-off flips memberships of points near a ball's edge. In float32 (eps 6e-8) on
2048-d features with |x|^2 in the thousands that error reaches the size of small
nearest-neighbour distances; in float64 it is ~1e-16 relative, below anything the
features carry. Features are also centred on the real mean first (distances do not
change; the norms, hence the cancellation, shrink). The cost is a float64 product:
three N x N x D passes (real-real, fake-fake, real-fake) for all four metrics.

Memory: distances are built in blocks of rows so that one block and its temporaries stay
under ``max_bytes`` (default 256 MiB), whatever N is: 10k x 10k features never hold the
800 MB full matrix.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_BYTES = 256 * 2**20
# Bytes per distance entry alive at once in a block: the float64 block, a partition or
# comparison result (8 B) and boolean masks; generous so `max_bytes` is a real bound.
_BYTES_PER_ENTRY = 24


def _features(x, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [num_samples, dim], got shape {f.shape}; "
                         f"flatten or pool the features first")
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has NaN or inf in {int(bad.sum())} of {len(f)} rows (first: row "
                         f"{int(np.argmax(bad))}); these usually come from a diverged generator or bad "
                         f"images: fix them, or drop those rows (x[np.isfinite(x).all(axis=1)])")
    return f


def _pair(real, fake, k_real: int, k_fake: int | None):
    for k in (k_real, k_fake):
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
    r, f = _features(real, "real features"), _features(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]} vs fake {f.shape[1]}; compute both "
                         f"sets with the same feature network (same layer)")
    for name, x, k in (("real", r, k_real), ("fake", f, k_fake)):
        need = 1 if k is None else k + 1
        if len(x) < need:
            what = "at least one sample" if k is None else f"k + 1 = {need} samples for k={k} nearest-neighbour radii"
            raise ValueError(f"{name} features: need {what}, got {len(x)}; pass more samples"
                             + ("" if k is None else " or a smaller k"))
    centre = r.mean(axis=0)
    return r - centre, f - centre


def _block_rows(n_cols: int, max_bytes: int) -> int:
    return max(1, int(max_bytes) // (_BYTES_PER_ENTRY * max(n_cols, 1)))


def _blocks(a: np.ndarray, b: np.ndarray, max_bytes: int):
    """Yields (start, squared distances [rows, len(b)]) for row blocks of `a`."""
    a2, b2 = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    step = _block_rows(len(b), max_bytes)
    for s in range(0, len(a), step):
        d = a[s:s + step] @ b.T
        d *= -2.0
        d += a2[s:s + step, None]
        d += b2[None, :]
        np.maximum(d, 0.0, out=d)  # round-off negatives
        yield s, d


def _knn_sq_radii(x: np.ndarray, ks, max_bytes: int) -> dict:
    """{k: squared distance of each row to its k-th nearest other row of x}."""
    ks = sorted(set(int(k) for k in ks))
    out = {k: np.empty(len(x)) for k in ks}
    for s, d in _blocks(x, x, max_bytes):
        rows = np.arange(len(d))
        d[rows, s + rows] = 0.0  # the point itself: exactly the smallest, so index k skips it once
        part = np.partition(d, ks, axis=1)
        for k in ks:
            out[k][s:s + len(d)] = part[:, k]
    return out


def knn_radii(features, k: int = 3, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Distance of each row of `features` [N, D] to its k-th nearest neighbour among the
    other rows (float64, [N])."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x = _features(features, "features")
    if len(x) < k + 1:
        raise ValueError(f"need k + 1 = {k + 1} samples for k={k} nearest-neighbour radii, got {len(x)}; "
                         f"pass more samples or a smaller k")
    return np.sqrt(_knn_sq_radii(x - x.mean(axis=0), [k], max_bytes)[k])


def _cross(real, fake, fake_sq_radii, real_sq_radii_pr, real_sq_radii_dc, max_bytes):
    """One pass over fake-real distances; each argument that is None is skipped."""
    in_real_ball = np.zeros(len(fake), bool)  # precision
    balls_per_fake = np.zeros(len(fake), np.int64)  # density
    in_fake_ball = np.zeros(len(real), bool)  # recall
    nearest_fake = np.full(len(real), np.inf)  # coverage
    for s, d in _blocks(fake, real, max_bytes):
        e = s + len(d)
        if real_sq_radii_pr is not None:
            in_real_ball[s:e] = (d <= real_sq_radii_pr[None, :]).any(axis=1)
        if fake_sq_radii is not None:
            in_fake_ball |= (d <= fake_sq_radii[s:e, None]).any(axis=0)
        if real_sq_radii_dc is not None:
            balls_per_fake[s:e] = (d <= real_sq_radii_dc[None, :]).sum(axis=1)
            np.minimum(nearest_fake, d.min(axis=0), out=nearest_fake)
    return in_real_ball, in_fake_ball, balls_per_fake, nearest_fake


def precision_recall(real, fake, k: int = 3, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `fake` [M, D] against
    `real` [N, D]: {"precision", "recall"}, floats in [0, 1]."""
    return precision_recall_density_coverage(real, fake, k_pr=k, k_dc=None, max_bytes=max_bytes)


def density_coverage(real, fake, k: int = 5, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Density and coverage (Naeem et al. 2020) of `fake` [M, D] against `real` [N, D],
    real balls only: {"density", "coverage"}; density is >= 0 and about 1 for fakes
    drawn like the reals, coverage in [0, 1]."""
    return precision_recall_density_coverage(real, fake, k_pr=None, k_dc=k, max_bytes=max_bytes)


def precision_recall_density_coverage(real, fake, *, k_pr: int | None = 3, k_dc: int | None = 5,
                                      max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """All four at the cost of three distance passes (real-real radii for both ks at
    once, fake-fake radii, one fake-real pass). `k_pr` or `k_dc` None skips that pair."""
    if k_pr is None and k_dc is None:
        raise ValueError("nothing to compute: k_pr and k_dc are both None")
    if k_dc is not None and (isinstance(k_dc, bool) or int(k_dc) != k_dc or k_dc < 1):
        raise ValueError(f"k must be a positive integer, got {k_dc!r}")
    ks_real = [int(k) for k in (k_pr, k_dc) if k is not None]
    r, f = _pair(real, fake, max(ks_real), k_pr)
    real_sq = _knn_sq_radii(r, ks_real, max_bytes)
    fake_sq = None if k_pr is None else _knn_sq_radii(f, [k_pr], max_bytes)[k_pr]
    in_real_ball, in_fake_ball, balls_per_fake, nearest_fake = _cross(
        r, f, fake_sq, None if k_pr is None else real_sq[k_pr], None if k_dc is None else real_sq[k_dc], max_bytes)
    out = {}
    if k_pr is not None:
        out.update(precision=float(in_real_ball.mean()), recall=float(in_fake_ball.mean()))
    if k_dc is not None:
        out.update(density=float(balls_per_fake.sum() / (k_dc * len(f))),
                   coverage=float((nearest_fake <= real_sq[k_dc]).mean()))
    return out


# --- class histogram ----------------------------------------------------------------------------

def _labels(predictions, num_classes: int, name: str = "predictions") -> np.ndarray:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    p = np.asarray(predictions)
    if p.ndim == 2:  # logits or probabilities [N, C]
        if p.shape[1] != num_classes:
            raise ValueError(f"{name}: logits have {p.shape[1]} classes but num_classes={num_classes}; pass the "
                             f"classifier's own number of classes")
        if not np.isfinite(p).all():
            raise ValueError(f"{name}: logits contain NaN or inf; check the classifier's inputs (images in range?)")
        p = p.argmax(axis=1)
    elif p.ndim != 1:
        raise ValueError(f"{name} must be labels [N] or logits [N, C], got shape {p.shape}")
    elif not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {p.dtype}; pass logits [N, C] or "
                         f"labels.astype(int) if they are whole numbers")
    if p.size == 0:
        raise ValueError(f"{name}: no samples")
    if p.min() < 0 or p.max() >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got range [{p.min()}, {p.max()}]")
    return p.astype(np.int64)


def class_histogram(predictions, num_classes: int) -> dict:
    """Histogram of the classes a classifier assigns to samples. `predictions`: labels [N]
    (integers) or logits [N, C] (argmax taken). Returns shares [C] (float64, summing to 1),
    entropy in nats, entropy normalised by log C (1 for a uniform histogram, 0 for one
    class), and the smallest and largest share."""
    labels = _labels(predictions, num_classes)
    shares = np.bincount(labels, minlength=num_classes) / len(labels)
    nonzero = shares[shares > 0]  # 0 log 0 = 0
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return {"shares": shares, "entropy": entropy, "entropy_normalized": entropy / float(np.log(num_classes)),
            "min_share": float(shares.min()), "max_share": float(shares.max())}


def conditional_accuracy(predictions, drawn_labels, num_classes: int) -> float:
    """Share of samples that the classifier puts in the class they were drawn for (a
    conditional generator's labels [N]); `predictions` as in `class_histogram`."""
    pred = _labels(predictions, num_classes)
    drawn = _labels(drawn_labels, num_classes, "drawn_labels")
    if drawn.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions but {len(drawn)} drawn labels: pass one label per sample")
    return float((pred == drawn).mean())
