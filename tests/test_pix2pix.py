"""pix2pix: the U-Net and PatchGAN models (shapes, receptive field analytically and by
the gradient of one output), the task on the one adversarial step, and exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.patchgan import PatchGAN, layers_for_image_size, receptive_field


def key(i=0):
    return jax.random.key(i, impl="rbg")  # fast to compile on CPU (see test_dcgan)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _brute_receptive_field(n_layers):
    """Receptive field by composing the layers' index intervals (independent of the formula)."""
    lo, hi = 0, 0  # input pixels seen by output pixel 0, going from the output back
    for stride in reversed([2] * n_layers + [1, 1]):
        lo, hi = lo * stride - 1, hi * stride - 1 + 3  # kernel 4, padding 1
    return hi - lo + 1


def test_patchgan_receptive_field_formula():
    assert [receptive_field(n) for n in (1, 2, 3, 4)] == [16, 34, 70, 142]
    assert all(receptive_field(n) == _brute_receptive_field(n) for n in range(1, 6))
    assert layers_for_image_size(256) == 3 and receptive_field(3) == 70  # the paper's 70x70 D
    assert layers_for_image_size(128) == 2 and layers_for_image_size(28) == 1


@pytest.mark.parametrize("n_layers,size", [(1, 32), (2, 48)])
def test_patchgan_receptive_field_by_gradient(n_layers, size):
    d = PatchGAN(image_size=size, width=4, n_layers=n_layers, norm="none")
    x = normal(0, (1, size, size, 1))
    params = d.init(key(), x)
    out = d.apply(params, x)
    i, j = out.shape[1] // 2, out.shape[2] // 2  # an interior output, not clipped by the border
    grad = jax.grad(lambda x: d.apply(params, x)[0, i, j, 0])(x)[0, :, :, 0]
    rows, cols = np.nonzero(np.abs(np.asarray(grad)) > 0)
    assert rows.max() - rows.min() + 1 == receptive_field(n_layers)
    assert cols.max() - cols.min() + 1 == receptive_field(n_layers)
    assert rows.min() > 0 and rows.max() < size - 1  # the field lies inside the image


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patchgan_shapes_condition_and_collections(norm):
    d = PatchGAN(image_size=28, width=4, norm=norm)
    x, c = normal(1, (2, 28, 28, 1)), normal(2, (2, 28, 28, 2))
    variables = d.init(key(), x, c)
    assert variables["params"]["conv0"]["kernel"].shape == (4, 4, 3, 4)  # image + condition channels
    assert ("batch_stats" in variables) == (norm == "batch")
    logits, updates = d.apply(variables, x, c, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 12, 12, 1) and logits.dtype == jnp.float32  # 28 -> 14 -> 13 -> 12
    std = float(np.std(np.asarray(variables["params"]["conv1"]["kernel"])))
    assert 0.01 < std < 0.03  # N(0, 0.02) init
    with pytest.raises(ValueError, match="share batch, height"):
        d.apply(variables, x, c[:, :14])
