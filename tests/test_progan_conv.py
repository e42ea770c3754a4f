"""Progressive GAN's convolution with its hand-written VJP (fast inside the step's
lax.switch on XLA:CPU): the same values as JAX's own differentiation of lax.conv, at first
and second order (WGAN-GP's double backprop), inside a switch, and through one train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import progan as pg
from jaxvision.losses import gradient_penalty

RNG = np.random.default_rng(0)


def _native(x, k):  # the code before: lax.conv differentiated by JAX
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _penalty_grads(conv):
    """d/dk of a WGAN-GP-like penalty of a two-conv critic: second order in both x and k."""
    def critic(x, k1, k2):
        return jnp.sum(jnp.tanh(conv(jax.nn.leaky_relu(conv(x, k1), 0.2), k2)) * jnp.arange(1.0, 4.0))

    def penalty(k1, k2, x):
        g = jax.grad(critic)(x, k1, k2)
        return jnp.mean((jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2, 3))) - 1.0) ** 2)
    return jax.grad(penalty, argnums=(0, 1, 2))


@pytest.mark.parametrize("ksize", [3, 1])
def test_conv_vjp_matches_jax_differentiation_at_first_and_second_order(ksize):
    x = jnp.asarray(RNG.normal(size=(4, 6, 5, 3)), jnp.float32)
    k1 = jnp.asarray(RNG.normal(size=(ksize, ksize, 3, 4)) * 0.3, jnp.float32)
    k2 = jnp.asarray(RNG.normal(size=(ksize, ksize, 4, 3)) * 0.3, jnp.float32)
    dy = jnp.asarray(RNG.normal(size=(4, 6, 5, 4)), jnp.float32)
    np.testing.assert_array_equal(pg.conv2d_same(x, k1), _native(x, k1))  # forward: the same op
    want = jax.vjp(_native, x, k1)[1](dy)
    got = jax.vjp(pg.conv2d_same, x, k1)[1](dy)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    want = jax.jit(_penalty_grads(_native))(k1, k2, x)
    # inside a switch branch, as in the ProGAN step (where the native form is the slow one)
    got = jax.jit(lambda *a: jax.lax.switch(jnp.int32(0), [_penalty_grads(pg.conv2d_same), lambda *b: b], *a))(
        k1, k2, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="odd kernel"):
        pg.conv2d_same(x, jnp.zeros((2, 2, 3, 4)))


def test_progan_losses_and_gradients_match_the_native_convolution_at_a_fade(monkeypatch):
    """D's WGAN-GP + drift loss and G's loss, and their gradients, at level 1 (alpha 3/8)
    in a switch branch as in the step, against lax.conv differentiated by JAX (the code
    before the fix) at top level."""
    G = pg.Generator(resolution=8, channels=1, latent_dim=8, fmap_base=16, fmap_max=8)
    D = pg.Discriminator(resolution=8, fmap_base=16, fmap_max=8)
    z = jnp.asarray(RNG.normal(size=(4, 8)), jnp.float32)
    real = jnp.asarray(RNG.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    # N(0, 1) parameters (biases too) from NumPy: the tree from eval_shape, no init to compile
    gp, dp = (jax.tree_util.tree_map(lambda s: jnp.asarray(RNG.normal(size=s.shape), jnp.float32),
                                     jax.eval_shape(net.init, jax.random.PRNGKey(0), x)["params"])
              for net, x in ((G, z), (D, real)))
    alpha = jnp.full((4, 1, 1, 1), 0.375)

    def losses(gp, dp):
        fake = G.apply({"params": gp}, z, 1, alpha)
        critic = lambda x: D.apply({"params": dp}, x, 1, alpha)  # noqa: E731
        r, f = critic(real), critic(jax.lax.stop_gradient(fake))
        d_loss = jnp.mean(f) - jnp.mean(r) + 10.0 * gradient_penalty(critic, real, fake, jax.random.PRNGKey(2)) \
            + 0.001 * jnp.mean(r ** 2)
        return d_loss, -jnp.mean(critic(fake))

    def grads(gp, dp):
        d_loss, d_grads = jax.value_and_grad(lambda d: losses(gp, d)[0])(dp)
        g_loss, g_grads = jax.value_and_grad(lambda g: losses(g, dp)[1])(gp)
        return d_loss, g_loss, d_grads, g_grads

    shapes = jax.eval_shape(grads, gp, dp)
    zeros = lambda *a: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # noqa: E731
    got = jax.jit(lambda *a: jax.lax.switch(jnp.int32(0), [grads, zeros], *a))(gp, dp)
    monkeypatch.setattr(pg, "conv2d_same", _native)
    want = jax.jit(grads)(gp, dp)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
