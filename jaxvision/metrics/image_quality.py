"""Per-image quality of a completed (inpainted) image against its target.

All functions take images [B, H, W, C] in [0, 1] (``to_unit`` maps [-1, 1] there) and
return one value per image [B], so an evaluation sums them and divides by the count.

* ``hole_l1``: mean |pred - target| over the hole's pixels and channels;
* ``hole_psnr``: 10 log10(1 / MSE) with the MSE over the hole (data range 1);
* ``ssim``: SSIM over the whole image (Wang et al. 2004): Gaussian window 11x11,
  sigma 1.5, K1 0.01, K2 0.03, population (not sample) statistics, averaged over the
  "valid" positions where the window fits inside the image and over the channels. It is
  skimage's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`` in value.

Pure jax.numpy, jit-able: they run inside an evaluation step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PSNR_MAX = 100.0  # a perfect fill (MSE 0) scores this instead of infinity


def to_unit(images):
    """[-1, 1] -> [0, 1]."""
    return (images + 1.0) * 0.5


def _hole_mean(values, hole):
    # values [B, H, W, C]; hole [B, H, W, 1]: the mean over the hole's pixels and channels.
    weight = jnp.broadcast_to(hole, values.shape)
    return jnp.sum(values * weight, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(weight, axis=(1, 2, 3)), 1.0)


def hole_l1(pred, target, hole):
    return _hole_mean(jnp.abs(pred - target), hole)


def hole_psnr(pred, target, hole):
    mse = _hole_mean(jnp.square(pred - target), hole)
    return jnp.minimum(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-30)), PSNR_MAX)


def _gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return jnp.asarray(g / g.sum(), jnp.float32)


def _filter_valid(x, g):
    # Separable Gaussian filter over H and W, "valid" positions only. x [B, H, W, C].
    k = g.shape[0]
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    x = sum(g[i] * x[:, i:i + h] for i in range(k))
    return sum(g[j] * x[:, :, j:j + w] for j in range(k))


def ssim(pred, target, data_range: float = 1.0):
    if pred.shape != target.shape:
        raise ValueError(f"SSIM of images of different shapes: {pred.shape} vs {target.shape}")
    if min(pred.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px (its window), got {pred.shape[1:3]}")
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    g = _gaussian_window()
    mu_x, mu_y = _filter_valid(pred, g), _filter_valid(target, g)
    var_x = _filter_valid(pred * pred, g) - mu_x ** 2
    var_y = _filter_valid(target * target, g) - mu_y ** 2
    cov = _filter_valid(pred * target, g) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def inpainting_metrics(pred, target, hole) -> dict:
    """All three per image, for images in [-1, 1] (converted to [0, 1] here)."""
    p, t = to_unit(pred), to_unit(target)
    return {"hole_l1": hole_l1(p, t, hole), "hole_psnr": hole_psnr(p, t, hole), "ssim": ssim(p, t)}
