"""Classification losses and metrics as pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
    """Per-example cross-entropy with integer labels, in float32 whatever the logits' dtype.

    Label smoothing spreads `label_smoothing` of the target mass uniformly over all
    classes (Szegedy et al. 2016), as big_vision and timm do.
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_correct(logits, labels, k: int):
    """1.0 where the label is among the k largest logits (ties broken by index)."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
