"""GAN losses on discriminator logits, and gradient penalties.

Every loss takes raw logits (shape [B], any float dtype), computes in at least float32,
averages over the batch and returns a scalar. The discriminator is "D(x) = sigmoid(logit)"
only for the non-saturating loss; the other losses use the logit directly as a critic value.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _f32(x):
    # Losses in bf16 lose the small differences the optimiser follows: compute in >= f32.
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# --- Non-saturating (Goodfellow et al. 2014) ----------------------------------------------
# -log sigmoid(t) = softplus(-t) and -log(1 - sigmoid(t)) = softplus(t): the softplus forms
# never take log(0) or exp of a large number, so logits of +-50 (or 1e4) stay exact.

def non_saturating_d_loss(real_logits, fake_logits):
    """-[E log D(x) + E log(1 - D(G(z)))] = E softplus(-real) + E softplus(fake)."""
    return (jnp.mean(jax.nn.softplus(-_f32(real_logits)))
            + jnp.mean(jax.nn.softplus(_f32(fake_logits))))


def non_saturating_g_loss(fake_logits):
    """-E log D(G(z)) = E softplus(-fake): strong gradients while D rejects the fakes."""
    return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


# --- Hinge (Lim & Ye 2017; SNGAN, BigGAN) ----------------------------------------------------

def hinge_d_loss(real_logits, fake_logits):
    """E relu(1 - real) + E relu(1 + fake)."""
    return (jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
            + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits))))


def hinge_g_loss(fake_logits):
    """-E fake."""
    return -jnp.mean(_f32(fake_logits))


# --- Least squares (Mao et al. 2017, targets a=0 fake, b=1 real, c=1) -----------------------

def least_squares_d_loss(real_logits, fake_logits):
    """0.5 E (real - 1)^2 + 0.5 E fake^2."""
    return (0.5 * jnp.mean(jnp.square(_f32(real_logits) - 1.0))
            + 0.5 * jnp.mean(jnp.square(_f32(fake_logits))))


def least_squares_g_loss(fake_logits):
    """0.5 E (fake - 1)^2."""
    return 0.5 * jnp.mean(jnp.square(_f32(fake_logits) - 1.0))


# --- Wasserstein (Arjovsky et al. 2017) ------------------------------------------------------
# Needs a Lipschitz critic: weight clipping, gradient_penalty below, or spectral norm.

def wasserstein_d_loss(real_logits, fake_logits):
    """E fake - E real (the critic maximises E real - E fake)."""
    return jnp.mean(_f32(fake_logits)) - jnp.mean(_f32(real_logits))


def wasserstein_g_loss(fake_logits):
    """-E fake."""
    return -jnp.mean(_f32(fake_logits))


# --- Penalties -------------------------------------------------------------------------------

def _per_example_sq_norm(g):
    return jnp.sum(jnp.square(_f32(g)), axis=tuple(range(1, g.ndim)))


def _input_grad(critic_fn, x):
    # grad of sum_i D(x_i) w.r.t. x gives every example its own gradient, *provided* D
    # treats examples independently (no BatchNorm in train mode): otherwise the
    # gradients mix examples and the penalty is not the one in the papers.
    return jax.grad(lambda x_: jnp.sum(critic_fn(x_)))(x)


def per_example_random(sampler: Callable, rng, shape, axis_name: str | None = None, **kwargs):
    """``sampler(rng, shape, **kwargs)`` (e.g. ``jax.random.normal``) for this device's rows.

    Under pmap (``axis_name`` set), every device draws the global batch's values with the
    same key and keeps its own rows: devices get different values, and pmap gives the
    values one device gets for the whole global batch (the jit form). Without
    ``axis_name`` it is exactly ``sampler(rng, shape, **kwargs)``.
    """
    if axis_name is None:
        return sampler(rng, shape, **kwargs)
    devices = jax.lax.psum(1, axis_name)
    values = sampler(rng, (devices * shape[0], *shape[1:]), **kwargs)
    return jax.lax.dynamic_slice_in_dim(values, jax.lax.axis_index(axis_name) * shape[0], shape[0])


def gradient_penalty(critic_fn: Callable, real, fake, rng, axis_name: str | None = None):
    """WGAN-GP penalty (Gulrajani et al. 2017): E[(||grad_x D(x_hat)||_2 - 1)^2].

    ``x_hat = eps * real + (1 - eps) * fake`` with one ``eps ~ U[0, 1)`` per example,
    drawn as ``jax.random.uniform(rng, (B, 1, ..., 1), real.dtype)``; under pmap pass the
    ``axis_name``: ``eps`` is then drawn for the global batch and each device keeps its
    rows (``per_example_random``), so devices do not share one draw and the mean over
    devices is the penalty of the global batch. The norm is taken per example over all
    non-batch axes. ``critic_fn`` maps a batch to logits [B] (close over params and the
    train flag); the weight lambda (10 in the paper) is the caller's.
    Differentiable w.r.t. anything ``critic_fn`` closes over (double backprop).
    """
    real = jnp.asarray(real)
    fake = jnp.asarray(fake)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {real.shape} "
                         f"and {fake.shape}")
    eps = per_example_random(jax.random.uniform, rng, (real.shape[0],) + (1,) * (real.ndim - 1), axis_name,
                             dtype=real.dtype)
    x_hat = eps * real + (1.0 - eps) * fake
    sq = _per_example_sq_norm(_input_grad(critic_fn, x_hat))
    # sqrt has an infinite derivative at 0 (NaN after the chain rule); the double `where`
    # keeps the value exact and gives a zero gradient for an exactly-zero input gradient.
    safe = jnp.where(sq > 0, sq, 1.0)
    norm = jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
    return jnp.mean(jnp.square(norm - 1.0))


def r1_penalty(critic_fn: Callable, real):
    """R1 penalty (Mescheder et al. 2018): E[||grad_x D(x)||_2^2] on real data.

    The paper's regulariser is (gamma / 2) * this value: the gamma / 2 factor (and any
    lazy-regularisation interval scaling) is the caller's.
    """
    return jnp.mean(_per_example_sq_norm(_input_grad(critic_fn, jnp.asarray(real))))


# name -> (d_loss(real_logits, fake_logits), g_loss(fake_logits))
GAN_LOSSES: dict[str, tuple[Callable, Callable]] = {
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "least_squares": (least_squares_d_loss, least_squares_g_loss),
    "wgan": (wasserstein_d_loss, wasserstein_g_loss),
}
