"""DCGAN generator / discriminator: shapes, variable collections, errors, and that one
Adam step on a fixed batch moves each network the right way."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.losses import non_saturating_d_loss, non_saturating_g_loss
from jaxvision.models import Discriminator, Generator

LATENT = 16
WIDTH = 8  # tiny nets: the tests check wiring, not capacity
B = 4


def key(i=0):
    # Test speed only: with threefry keys every parameter shape compiles its own random
    # kernel (seconds each on this 2-core CPU); the "rbg" generator compiles in a blink.
    return jax.random.key(i, impl="rbg")


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _labels(num_classes):
    return None if num_classes is None else jnp.arange(B) % num_classes


@pytest.mark.parametrize(
    "size,channels,num_classes,sn",
    list(itertools.product((28, 32, 64), (1, 3), (None, 10), (False, True))),
)
def test_shapes_and_collections(size, channels, num_classes, sn):
    # eval_shape traces without running: the full grid stays fast on a 2-core CPU.
    G = Generator(image_size=size, channels=channels, latent_dim=LATENT, width=WIDTH,
                  num_classes=num_classes)
    D = Discriminator(image_size=size, channels=channels, width=WIDTH,
                      num_classes=num_classes, spectral_norm=sn)
    z = jax.ShapeDtypeStruct((B, LATENT), jnp.float32)
    y = _labels(num_classes)
    g_vars = jax.eval_shape(lambda z_: G.init(key(), z_, y, train=False), z)
    assert set(g_vars) == {"params", "batch_stats"}
    imgs, upd = jax.eval_shape(
        lambda v, z_: G.apply(v, z_, y, train=True, mutable=["batch_stats"]), g_vars, z)
    assert imgs.shape == (B, size, size, channels) and imgs.dtype == jnp.float32
    assert set(upd) == {"batch_stats"}

    d_vars = jax.eval_shape(lambda x: D.init(key(), x, y, train=False), imgs)
    assert set(d_vars) == ({"params", "batch_stats"} if sn else {"params"})
    logits = jax.eval_shape(lambda v, x: D.apply(v, x, y, train=False), d_vars, imgs)
    assert logits.shape == (B,) and logits.dtype == jnp.float32


# Running (not just tracing) costs compile time on CPU, so each case is one jitted program.
@pytest.mark.parametrize("num_classes,sn", [(None, False), (10, True)])
def test_forward_runs(num_classes, sn):
    G = Generator(latent_dim=LATENT, width=WIDTH, num_classes=num_classes)
    D = Discriminator(width=WIDTH, num_classes=num_classes, spectral_norm=sn)
    y = _labels(num_classes)
    # Rows 0 and 1 share z (and, for D, an image) but differ in label: a conditional
    # model's outputs must differ there.
    z = normal(1, (B, LATENT)).at[1].set(normal(1, (B, LATENT))[0])

    @jax.jit
    def run(z):
        g_vars = G.init(key(0), z, y, train=False)
        imgs, g_upd = G.apply(g_vars, z, y, train=True, mutable=["batch_stats"])
        imgs_eval = G.apply(g_vars, z, y, train=False)  # eval needs nothing mutable
        d_vars = D.init(key(2), imgs, y, train=False)
        logits, d_upd = D.apply(d_vars, imgs, y, train=True, mutable=["batch_stats"])
        logits_eval = D.apply(d_vars, jnp.tile(imgs[:1], (B, 1, 1, 1)), y, train=False)
        return g_vars, imgs, g_upd, imgs_eval, d_vars, logits, d_upd, logits_eval

    g_vars, imgs, g_upd, imgs_eval, d_vars, logits, d_upd, logits_eval = run(z)
    assert imgs.shape == imgs_eval.shape == (B, 28, 28, 1)
    assert float(jnp.max(jnp.abs(imgs))) <= 1.0  # tanh range
    # Train mode moves the BatchNorm running averages.
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        jnp.array_equal, g_upd["batch_stats"], g_vars["batch_stats"])))
    assert logits.shape == logits_eval.shape == (B,) and np.all(np.isfinite(logits))
    if sn:
        # The power-iteration vectors advance only in train mode.
        changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                         d_upd["batch_stats"], d_vars["batch_stats"])
        assert any(jax.tree_util.tree_leaves(changed))
    else:
        assert not d_upd  # nothing to update without spectral norm
    if num_classes is None:
        np.testing.assert_allclose(imgs[0], imgs[1], atol=1e-6)
        np.testing.assert_allclose(logits_eval[0], logits_eval[1], rtol=1e-5)
    else:
        assert not np.allclose(imgs[0], imgs[1], atol=1e-4)
        assert not np.isclose(logits_eval[0], logits_eval[1], rtol=1e-4)


def test_errors():
    z = jnp.zeros((2, LATENT))
    k = key(0)
    with pytest.raises(ValueError, match="supported sizes: 28, 32, 64"):
        Generator(image_size=48, latent_dim=LATENT).init(k, z, train=False)
    with pytest.raises(ValueError, match="supported sizes"):
        Discriminator(image_size=16).init(k, jnp.zeros((2, 16, 16, 1)), train=False)
    with pytest.raises(ValueError, match="class-conditional: pass labels="):
        Generator(latent_dim=LATENT, num_classes=10).init(k, z, train=False)
    with pytest.raises(ValueError, match="class-conditional: pass labels="):
        Discriminator(num_classes=10).init(k, jnp.zeros((2, 28, 28, 1)), train=False)
    with pytest.raises(ValueError, match="unconditional"):
        Generator(latent_dim=LATENT).init(k, z, jnp.array([0, 1]), train=False)
    with pytest.raises(ValueError, match="unconditional"):
        Discriminator().init(k, jnp.zeros((2, 28, 28, 1)), jnp.array([0, 1]), train=False)
    with pytest.raises(ValueError, match="labels must have shape"):
        Generator(latent_dim=LATENT, num_classes=10).init(k, z, jnp.array([0]), train=False)
    with pytest.raises(ValueError, match="integers"):
        Generator(latent_dim=LATENT, num_classes=10).init(k, z, jnp.zeros(2), train=False)
    with pytest.raises(ValueError, match="z must have shape"):
        Generator(latent_dim=LATENT).init(k, jnp.zeros((2, 7)), train=False)
    with pytest.raises(ValueError, match="expected images of shape"):
        Discriminator(image_size=28).init(k, jnp.zeros((2, 32, 32, 1)), train=False)
    with pytest.raises(ValueError, match="expected images of shape"):
        Discriminator(channels=3).init(k, jnp.zeros((2, 28, 28, 1)), train=False)


def test_one_adam_step_lowers_each_loss():
    # The DCGAN recipe, Adam(2e-4, b1=0.5). Adam's first step moves every parameter by
    # about lr * sign(grad), a first-order decrease of lr * |grad|_1 that dwarfs the
    # second-order term at this lr, so the paper's lr is already robust here (observed
    # drops: D 1.174 -> 1.140, G 0.705 -> 0.683, far above the 1e-4 margin).
    G = Generator(latent_dim=LATENT, width=WIDTH, num_classes=10)
    D = Discriminator(width=WIDTH, num_classes=10)
    n = B
    z = normal(0, (n, LATENT))
    y = jnp.arange(n) % 10
    real = jnp.tanh(2 * normal(1, (n, 28, 28, 1)))
    g_vars = G.init(key(2), z, y, train=False)
    d_vars = D.init(key(3), real, y, train=False)
    d_state = {c: v for c, v in d_vars.items() if c != "params"}
    g_state = {"batch_stats": g_vars["batch_stats"]}
    tx = optax.adam(2e-4, b1=0.5)

    fake = G.apply(g_vars, z, y, train=True, mutable=["batch_stats"])[0]

    # D in eval mode: with spectral norm (not used here, to keep the test fast) both
    # evaluations then use the same power-iteration vectors; only the parameters differ.
    def d_loss(p):
        v = {"params": p, **d_state}
        return non_saturating_d_loss(D.apply(v, real, y, train=False),
                                     D.apply(v, fake, y, train=False))

    def g_loss(p):
        imgs, _ = G.apply({"params": p, **g_state}, z, y, train=True,
                          mutable=["batch_stats"])
        return non_saturating_g_loss(D.apply(d_vars, imgs, y, train=False))

    @jax.jit
    def losses_before_after(params_d, params_g):
        out = []
        for loss_fn, params in ((d_loss, params_d), (g_loss, params_g)):
            before, grads = jax.value_and_grad(loss_fn)(params)
            updates, _ = tx.update(grads, tx.init(params), params)
            out.append((before, loss_fn(optax.apply_updates(params, updates))))
        return out

    (d_before, d_after), (g_before, g_after) = losses_before_after(d_vars["params"],
                                                                   g_vars["params"])
    assert d_after < d_before - 1e-4, (d_before, d_after)
    assert g_after < g_before - 1e-4, (g_before, g_after)


def test_depth_to_space_matches_a_pixel_loop():
    from jaxvision.models.dcgan import depth_to_space

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4 * 5)).astype(np.float32)
    want = np.zeros((2, 6, 8, 5), np.float32)
    for y, xx, dy, dx in itertools.product(range(3), range(4), range(2), range(2)):
        want[:, 2 * y + dy, 2 * xx + dx] = x[:, y, xx, (dy * 2 + dx) * 5:(dy * 2 + dx + 1) * 5]
    np.testing.assert_array_equal(depth_to_space(jnp.asarray(x)), want)


@pytest.mark.parametrize("method", ["resize_conv", "subpixel"])
def test_upsamplers_against_numpy(method):
    """Both checkerboard-free layers against NumPy. resize_conv: nearest-neighbour 2x
    resize, then a 3x3 SAME convolution. subpixel at ICNR initialisation (its four
    sub-pixel kernels start equal): the 3x3 convolution at the low resolution, then a
    nearest-neighbour 2x resize."""
    from jaxvision.models.dcgan import Upsample2x

    x = normal(1, (2, 5, 5, 3))
    layer = Upsample2x(4, method, use_bias=False)
    params = layer.init(key(), x)["params"]["conv"]
    kernel = np.asarray(params["kernel"], np.float64)

    def conv3x3(a, k):
        pad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = a.shape[1:3]
        return sum(np.einsum("bhwc,cd->bhwd", pad[:, i:i + h, j:j + w], k[i, j]) for i in range(3) for j in range(3))

    def nearest2x(a):
        return np.repeat(np.repeat(a, 2, 1), 2, 2)

    x64 = np.asarray(x, np.float64)
    if method == "subpixel":
        assert kernel.shape == (3, 3, 3, 16)
        for k in range(1, 4):  # ICNR: each block of 4 output channels is the same kernel
            np.testing.assert_array_equal(kernel[..., 4 * k:4 * k + 4], kernel[..., :4])
        want = nearest2x(conv3x3(x64, kernel[..., :4]))
    else:
        want = conv3x3(nearest2x(x64), kernel)
    np.testing.assert_allclose(layer.apply({"params": {"conv": params}}, x), want, atol=1e-5)


@pytest.mark.parametrize("method", ["resize_conv", "subpixel"])
def test_generator_upsample_options(method):
    G = Generator(image_size=28, channels=1, latent_dim=LATENT, width=WIDTH, upsample=method)
    z = normal(2, (B, LATENT))
    variables = G.init(key(), z, train=False)
    assert G.apply(variables, z, train=False).shape == (B, 28, 28, 1)
    assert set(variables["params"]) == {"project", "project_bn", "up0", "up0_bn", "to_image"}
    with pytest.raises(ValueError, match="upsample must be one of"):
        Generator(image_size=28, latent_dim=LATENT, width=WIDTH, upsample="bilinear").init(key(), z, train=False)


@pytest.mark.parametrize("method,size,channels", [("subpixel", 28, 1), ("transpose", 64, 3)])
def test_generator_output_conv(method, size, channels):
    """SN-GAN's ending: one more 2x layer (channels halved, BN, ReLU), then a 3x3 conv at full
    resolution and tanh, checked against NumPy from the captured BatchNorm output."""
    from jaxvision.models.dcgan import _num_upsamplings
    from jaxvision.tasks import gan

    n = _num_upsamplings(size)
    G = Generator(image_size=size, channels=channels, latent_dim=LATENT, width=WIDTH, upsample=method,
                  output_conv=True)
    z = normal(3, (B, LATENT))
    variables = G.init(key(), z, train=False)
    params = variables["params"]
    ups = {f"up{i}" for i in range(n)} | {f"up{i}_bn" for i in range(n)}
    assert set(params) == {"project", "project_bn", "to_image"} | ups
    last = WIDTH * 2 ** (n - 1) // 2 ** n  # the project layer's channels, halved n times
    assert params["to_image"]["kernel"].shape == (3, 3, last, channels)
    assert gan.image_channels(params, gan.GANModelConfig(upsample=method, g_output_conv=True)) == channels

    images, state = G.apply(variables, z, train=False, capture_intermediates=True, mutable=["intermediates"])
    assert images.shape == (B, size, size, channels)
    h = np.maximum(np.asarray(state["intermediates"][f"up{n - 1}_bn"]["__call__"][0], np.float64), 0.0)
    assert h.shape == (B, size, size, last)
    k = np.asarray(params["to_image"]["kernel"], np.float64)
    pad = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(np.einsum("bhwc,cd->bhwd", pad[:, i:i + size, j:j + size], k[i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(images, np.tanh(conv + np.asarray(params["to_image"]["bias"])), atol=1e-5)


@pytest.mark.parametrize("method", ["transpose", "resize_conv", "subpixel"])
def test_image_channels_of_each_output_layer(method):
    from jaxvision.tasks import gan

    G = Generator(image_size=28, channels=3, latent_dim=LATENT, width=WIDTH, upsample=method)
    params = jax.eval_shape(lambda: G.init(key(), jnp.zeros((B, LATENT)), train=False))["params"]
    assert gan.image_channels(params, gan.GANModelConfig(upsample=method)) == 3
