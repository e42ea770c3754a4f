"""GAN losses against straightforward float64 NumPy formulas; penalties against
finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.losses import (
    GAN_LOSSES,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    least_squares_d_loss,
    least_squares_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
    r1_penalty,
    wasserstein_d_loss,
    wasserstein_g_loss,
)

# Includes +-50, where 1 - sigmoid(50) rounds to 0 in float32 and float64 alike.
REAL = np.array([-50.0, -3.0, -0.5, 0.0, 0.7, 2.5, 50.0])
FAKE = np.array([50.0, 4.0, 1.0, 0.0, -0.3, -2.0, -50.0])


def log_sigmoid_ref(x):
    # log(sigmoid(x)) = -log(1 + exp(-x)): exact in float64 for |x| well below 700.
    return -np.log1p(np.exp(-np.asarray(x, np.float64)))


def test_reference_is_needed_at_extremes():
    # The naive form overflows to -inf: this is what the softplus forms avoid.
    with np.errstate(divide="ignore"):
        sig = 1.0 / (1.0 + np.exp(-np.float32(50.0)))
        assert np.isneginf(np.log(np.float32(1.0) - sig))


def test_non_saturating_matches_log_sigmoid_formula():
    # D = sigmoid(logit); 1 - sigmoid(t) = sigmoid(-t).
    d_ref = -(np.mean(log_sigmoid_ref(REAL)) + np.mean(log_sigmoid_ref(-FAKE)))
    g_ref = -np.mean(log_sigmoid_ref(FAKE))
    d = non_saturating_d_loss(jnp.asarray(REAL, jnp.float32), jnp.asarray(FAKE, jnp.float32))
    g = non_saturating_g_loss(jnp.asarray(FAKE, jnp.float32))
    assert d.shape == () and g.shape == ()
    assert np.isfinite(d) and np.isfinite(g)
    np.testing.assert_allclose(d, d_ref, rtol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)
    # A logit of -50 on a real example costs 50 nats, not inf.
    np.testing.assert_allclose(non_saturating_g_loss(jnp.array([-50.0])), 50.0, rtol=1e-7)


def test_non_saturating_gradients_finite_at_extremes():
    g = jax.grad(non_saturating_d_loss, argnums=(0, 1))(jnp.asarray(REAL, jnp.float32),
                                                        jnp.asarray(FAKE, jnp.float32))
    assert all(np.all(np.isfinite(x)) for x in g)


def test_hinge_least_squares_wasserstein_formulas():
    r = jnp.asarray(REAL, jnp.float32)
    f = jnp.asarray(FAKE, jnp.float32)
    cases = [
        (hinge_d_loss(r, f), np.mean(np.maximum(0, 1 - REAL)) + np.mean(np.maximum(0, 1 + FAKE))),
        (hinge_g_loss(f), -np.mean(FAKE)),
        (least_squares_d_loss(r, f), 0.5 * np.mean((REAL - 1) ** 2) + 0.5 * np.mean(FAKE ** 2)),
        (least_squares_g_loss(f), 0.5 * np.mean((FAKE - 1) ** 2)),
        (wasserstein_d_loss(r, f), np.mean(FAKE) - np.mean(REAL)),
        (wasserstein_g_loss(f), -np.mean(FAKE)),
    ]
    for got, ref in cases:
        assert got.shape == ()
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_bfloat16_logits_are_computed_in_float32():
    r = jnp.asarray(REAL, jnp.bfloat16)
    f = jnp.asarray(FAKE, jnp.bfloat16)
    for d_loss, g_loss in GAN_LOSSES.values():
        assert d_loss(r, f).dtype == jnp.float32
        assert g_loss(f).dtype == jnp.float32


def test_registry():
    assert set(GAN_LOSSES) == {"non_saturating", "hinge", "least_squares", "wgan"}
    assert GAN_LOSSES["non_saturating"] == (non_saturating_d_loss, non_saturating_g_loss)
    # All jit cleanly.
    r, f = jnp.asarray(REAL, jnp.float32), jnp.asarray(FAKE, jnp.float32)
    for d_loss, g_loss in GAN_LOSSES.values():
        np.testing.assert_allclose(jax.jit(d_loss)(r, f), d_loss(r, f), rtol=1e-6)
        np.testing.assert_allclose(jax.jit(g_loss)(f), g_loss(f), rtol=1e-6)


# --- penalties against central finite differences in float64 ---------------------------------

def _x64():
    return jax.enable_x64(True)


def _critic_params(shape, key=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return (jax.random.normal(k1, shape, jnp.float64),
            jax.random.normal(k2, shape, jnp.float64))


def _critic(params):
    w, v = params

    def f(x):  # smooth, nonlinear, one value per example
        return jnp.sum(jnp.tanh(x * w), axis=(1, 2, 3)) + 0.3 * jnp.sum((x * v) ** 2,
                                                                         axis=(1, 2, 3))
    return f


def _fd_grad_norms(f, x, h=1e-6):
    """Per-example gradient norms by central differences (the critic is per-example)."""
    x = np.asarray(x)
    grads = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        b = idx[0]
        grads[idx] = (float(f(jnp.asarray(xp))[b]) - float(f(jnp.asarray(xm))[b])) / (2 * h)
    return np.sqrt(np.sum(grads ** 2, axis=(1, 2, 3))), grads


def test_gradient_penalty_matches_finite_differences():
    with _x64():
        shape = (3, 2, 2, 2)
        critic = _critic(_critic_params(shape[1:]))
        real = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float64)
        fake = jax.random.normal(jax.random.PRNGKey(2), shape, jnp.float64)
        rng = jax.random.PRNGKey(3)
        # The documented interpolation draw.
        eps = jax.random.uniform(rng, (shape[0], 1, 1, 1), jnp.float64)
        x_hat = eps * real + (1 - eps) * fake
        norms, _ = _fd_grad_norms(critic, x_hat)
        ref = np.mean((norms - 1.0) ** 2)
        got = gradient_penalty(critic, real, fake, rng)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, ref, rtol=1e-7)
        # real == fake: x_hat == real whatever eps is.
        norms, _ = _fd_grad_norms(critic, real)
        np.testing.assert_allclose(gradient_penalty(critic, real, real, rng),
                                   np.mean((norms - 1.0) ** 2), rtol=1e-7)


def test_r1_penalty_matches_finite_differences():
    with _x64():
        shape = (2, 2, 3, 1)
        critic = _critic(_critic_params(shape[1:], key=5))
        real = jax.random.normal(jax.random.PRNGKey(6), shape, jnp.float64)
        norms, _ = _fd_grad_norms(critic, real)
        np.testing.assert_allclose(r1_penalty(critic, real), np.mean(norms ** 2), rtol=1e-7)


def test_penalties_differentiable_wrt_critic_params():
    shape = (4, 3, 3, 2)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = (jax.random.normal(k[0], shape[1:]), jax.random.normal(k[1], shape[1:]))
    real = jax.random.normal(k[2], shape)
    fake = jax.random.normal(k[3], shape)

    gp_grads = jax.jit(jax.grad(lambda p: gradient_penalty(_critic(p), real, fake,
                                                           jax.random.PRNGKey(1))))(params)
    r1_grads = jax.jit(jax.grad(lambda p: r1_penalty(_critic(p), real)))(params)
    for g in jax.tree_util.tree_leaves((gp_grads, r1_grads)):
        assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_gradient_penalty_with_constant_critic_is_one_and_finite():
    # Zero input gradient: penalty (0 - 1)^2 = 1 and no NaN from d sqrt / d 0.
    x = jnp.ones((2, 2, 2, 1))
    const = lambda scale: (lambda x_: scale * jnp.zeros(x_.shape[0]))
    np.testing.assert_allclose(gradient_penalty(const(1.0), x, -x, jax.random.PRNGKey(0)), 1.0)
    g = jax.grad(lambda s: gradient_penalty(const(s), x, -x, jax.random.PRNGKey(0)))(1.0)
    assert np.isfinite(g)


def test_gradient_penalty_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(lambda x: x.sum((1, 2, 3)), jnp.ones((2, 2, 2, 1)),
                         jnp.ones((3, 2, 2, 1)), jax.random.PRNGKey(0))
