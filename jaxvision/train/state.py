"""The one train state shared by every task (classification, GANs).

A task keeps whatever it needs in these fields: a GAN stores
`{"generator": ..., "discriminator": ...}` in `params` and `opt_state`, and its
EMA generator in `extra`. The optimizer itself is not part of the state: it is a
pure function held by the step, so the state is a plain pytree that orbax can save
and shard.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of completed optimizer steps
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key; step keys are fold_in(rng, step), never split in place
    model_state: Any = struct.field(default_factory=dict)  # e.g. BatchNorm statistics
    extra: Any = struct.field(default_factory=dict)  # e.g. EMA weights

    def step_rng(self, *tags: int) -> jax.Array:
        """A key unique to this step (and tags), the same however the run was resumed."""
        key = jax.random.fold_in(self.rng, self.step)
        for tag in tags:
            key = jax.random.fold_in(key, tag)
        return key


def create(params, tx, rng, model_state=None, extra=None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=rng,
        model_state=model_state if model_state is not None else {},
        extra=extra if extra is not None else {},
    )
