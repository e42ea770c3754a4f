"""Data parallelism: one pure step, compiled with `jit` over a device mesh.

The state is replicated (or, with `fsdp=True`, its large arrays are sharded over the
data axis) and the global batch is split along the data axis; XLA inserts the
gradient all-reduce. Works unchanged across hosts after `jax.distributed.initialize`:
each process contributes its local batch to the global array.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n}, e.g. {max(1, round(global_batch_size / n)) * n}."
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(abstract_state, mesh: Mesh, *, fsdp: bool = False, fsdp_min_size: int = 2**18):
    """Replicated by default; FSDP shards each array of >= `fsdp_min_size` elements
    along its largest dimension divisible by the mesh size (others stay replicated)."""
    n = mesh.devices.size

    def spec(leaf):
        shape = getattr(leaf, "shape", ())
        if not fsdp or n == 1 or math.prod(shape) < fsdp_min_size:
            return replicated(mesh)
        dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        for d in dims:
            if shape[d] % n == 0:
                axes = [None] * len(shape)
                axes[d] = DATA_AXIS
                return NamedSharding(mesh, P(*axes))
        return replicated(mesh)

    return jax.tree_util.tree_map(spec, abstract_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble the global batch from this process's part (one slice per process)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def jit_train_step(step_fn, mesh: Mesh, shardings):
    """`step_fn(state, batch) -> (state, metrics)` jitted with the state donated."""
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(eval_fn, mesh: Mesh, shardings):
    return jax.jit(eval_fn, in_shardings=(shardings, batch_sharding(mesh)), out_shardings=replicated(mesh))
