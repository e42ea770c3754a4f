"""Gradients, optionally accumulated over micro-batches to fit large models in memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def accumulated_value_and_grad(loss_fn, params, batch: dict, micro_batches: int = 1):
    """`loss_fn(params, micro_batch) -> (loss, aux)` averaged over `micro_batches` equal
    pieces of `batch`, computed one piece at a time (lax.scan), so peak activation
    memory is that of one piece. With equal pieces the mean of the piece means is the
    mean over the whole batch: the result equals one step on the whole batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch)
    size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if size % micro_batches:
        raise ValueError(
            f"The batch of {size} examples cannot be cut into {micro_batches} equal micro-batches; "
            "choose micro_batches dividing the per-step batch."
        )
    pieces = jax.tree_util.tree_map(lambda x: x.reshape(micro_batches, size // micro_batches, *x.shape[1:]), batch)

    def body(carry, micro):
        (loss, aux), grads = grad_fn(params, micro)
        return jax.tree_util.tree_map(jnp.add, carry, ((loss, aux), grads)), None

    first = jax.tree_util.tree_map(lambda x: x[0], pieces)
    rest = jax.tree_util.tree_map(lambda x: x[1:], pieces)
    carry, _ = jax.lax.scan(body, grad_fn(params, first), rest)
    return jax.tree_util.tree_map(lambda x: x / micro_batches, carry)
