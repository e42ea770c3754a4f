"""Inpainting metrics against independent NumPy/SciPy references: L1 and PSNR over the
hole, SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5) over the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxvision.metrics.image_quality import hole_l1, hole_psnr, inpainting_metrics, ssim


def _ssim_reference(x, y):
    """SSIM of two [H, W] float64 images, written from the paper with scipy.ndimage:
    Gaussian-weighted local statistics (truncate 10/3 -> an 11-tap window at sigma 1.5),
    the borders where the window sticks out of the image cropped."""
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    f = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s[5:-5, 5:-5].mean()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    target = rng.uniform(size=(3, 16, 20, 2))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    pred[1] = target[1]  # a perfect image
    hole = (rng.uniform(size=(3, 16, 20, 1)) < 0.3).astype(np.float64)
    return pred, target, hole


def test_hole_l1_and_psnr(images):
    pred, target, hole = images
    for b in range(3):
        h = hole[b, ..., 0] > 0
        diff = pred[b][h] - target[b][h]  # [n_hole, C]
        np.testing.assert_allclose(hole_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(hole))[b],
                                   np.abs(diff).mean(), rtol=1e-5)
        psnr = hole_psnr(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(hole))[b]
        if b == 1:
            assert psnr == 100.0  # perfect: capped, not inf
        else:
            np.testing.assert_allclose(psnr, 10 * np.log10(1 / np.mean(diff ** 2)), rtol=1e-5)


def test_ssim_against_reference(images):
    pred, target, _ = images
    got = np.asarray(jax.jit(ssim)(jnp.asarray(pred), jnp.asarray(target)))
    want = [np.mean([_ssim_reference(pred[b, ..., c], target[b, ..., c]) for c in range(2)]) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert abs(got[1] - 1.0) < 1e-5 and got[0] < 0.99
    # Structure, not just intensity: a constant shift keeps SSIM high, a shuffle ruins it.
    shifted = ssim(jnp.asarray(target[:1] * 0.9 + 0.05), jnp.asarray(target[:1]))
    shuffled = ssim(jnp.asarray(target[:1, ::-1]), jnp.asarray(target[:1]))
    assert shifted > 0.9 > 0.2 > shuffled
    with pytest.raises(ValueError, match="at least 11"):
        ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))


def test_inpainting_metrics_take_minus_one_to_one(images):
    pred, target, hole = images
    m = inpainting_metrics(jnp.asarray(pred * 2 - 1), jnp.asarray(target * 2 - 1), jnp.asarray(hole))
    np.testing.assert_allclose(m["hole_l1"], hole_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(hole)),
                               rtol=1e-5)
