"""Optimizers and learning-rate schedules (optax), built from plain arguments."""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
             end_ratio: float = 0.0):
    """Linear warmup from 0, then `decay` down to `end_ratio * learning_rate`."""
    if decay not in SCHEDULES:
        raise ValueError(f"Unknown schedule {decay!r}; choose one of {SCHEDULES}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must lie in [0, total_steps={total_steps}]: "
                         "lower the warmup (optim.warmup_steps) or train longer (total_steps).")
    decay_steps = max(total_steps - warmup_steps, 1)
    end = learning_rate * end_ratio
    after = {
        "cosine": optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_ratio),
        "linear": optax.linear_schedule(learning_rate, end, decay_steps),
        "constant": optax.constant_schedule(learning_rate),
    }[decay]
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps])


def decay_mask(params):
    """True for weight matrices / conv kernels; False for biases, norms, embeddings, CLS.

    The usual ViT practice: decaying LayerNorm scales, biases or position embeddings
    hurts, and only >=2-d kernels named 'kernel' are regularised.
    """
    flat = traverse_util.flatten_dict(params)
    # A leaf without ndim is optax's MaskedNode: the place of a frozen parameter when
    # freezing (multi_transform) hands this optimizer only the trainable ones.
    return traverse_util.unflatten_dict(
        {path: path[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2 for path, leaf in flat.items()})


def make_optimizer(
    name: str,
    learning_rate,
    *,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    momentum: float = 0.9,
    grad_clip_norm: float | None = None,
    frozen_mask=None,
) -> optax.GradientTransformation:
    """`learning_rate` is a float or an optax schedule.

    `frozen_mask`: optional pytree (or callable) of bools, True where parameters stay
    fixed (linear probes); their updates are zeroed and they get no optimizer state.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    if name == "adamw":
        opt = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
    elif name == "adam":
        opt = optax.adam(learning_rate, b1=b1, b2=b2)
    else:
        opt = optax.sgd(learning_rate, momentum=momentum or None)
        if weight_decay:
            opt = optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask), opt)
    chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
    tx = optax.chain(*chain, opt)
    if frozen_mask is None:
        return tx

    def labels(params):
        mask = frozen_mask(params) if callable(frozen_mask) else frozen_mask
        return jax.tree_util.tree_map(lambda frozen: "frozen" if frozen else "trainable", mask)

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
