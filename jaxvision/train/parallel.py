"""Data parallelism: the same pure step body in two parallel forms.

* `MeshParallel` (default): `jit` over a device mesh with NamedSharding. The state is
  replicated (or, with `fsdp=True`, large arrays are sharded over the data axis, ZeRO-3
  style) and the global batch is split along the data axis; XLA inserts the gradient
  all-reduce. This is what JAX recommends since `pmap` went into maintenance.
* `PmapParallel`: `jax.pmap` with per-device batches and a replicated state. The step
  body averages gradients with `lax.pmean` over `AXIS_NAME` (the task is built with
  `axis_name=AXIS_NAME`); the loss and update logic are the same function.

Both work across hosts after `jax.distributed.initialize`: each process feeds its own
slice of the global batch. Checkpoints hold the same plain pytree either way, so a run
can be resumed in the other form or on another device count.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
AXIS_NAME = "batch"  # the pmap axis; step bodies pmean over it
FORMS = ("mesh", "pmap")


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_global_batch(global_batch_size: int, mesh) -> None:
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
        for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
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


class MeshParallel:
    name = "mesh"
    axis_name = None  # jit sees the global batch: no explicit collectives in the body

    def __init__(self, devices=None, *, fsdp: bool = False):
        self.mesh = make_mesh(devices)
        self.fsdp = fsdp
        self.shardings = None

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def check_batch(self, global_batch_size: int):
        check_global_batch(global_batch_size, self.mesh)

    def prepare(self, abstract_state):
        self.shardings = state_shardings(abstract_state, self.mesh, fsdp=self.fsdp)

    def init(self, init_fn, rng):
        return jax.jit(init_fn, out_shardings=self.shardings)(rng)

    def restore_target(self, abstract_state):
        return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract_state, self.shardings)

    def from_checkpoint(self, state):
        return state  # restored straight into the target shardings

    def put_batch(self, local_batch: dict) -> dict:
        return global_batch(local_batch, self.mesh)

    def compile_step(self, step_fn, compiler_options=None):
        return jax.jit(step_fn, in_shardings=(self.shardings, batch_sharding(self.mesh)),
                       out_shardings=(self.shardings, replicated(self.mesh)), donate_argnums=0,
                       compiler_options=compiler_options or None)

    def compile_eval(self, eval_fn):
        return jax.jit(eval_fn, in_shardings=(self.shardings, batch_sharding(self.mesh)),
                       out_shardings=replicated(self.mesh))

    def host_state(self, state):
        return state  # already a plain pytree of (global) arrays

    def metrics(self, metrics):
        return metrics


def _first_replica(tree):
    """The copy on this process's first device of each pmapped (replicated) array."""

    def first(x):
        return x.addressable_shards[0].data.reshape(x.shape[1:])

    return jax.tree_util.tree_map(first, tree)


class PmapParallel:
    name = "pmap"
    axis_name = AXIS_NAME

    def __init__(self, devices=None, *, fsdp: bool = False):
        if fsdp:
            raise ValueError("fsdp=True needs the mesh form (parallel='mesh'); pmap replicates the state.")
        self.devices = jax.local_devices() if devices is None else devices
        self.mesh = None

    @property
    def num_devices(self) -> int:
        return len(self.devices) * jax.process_count()

    def check_batch(self, global_batch_size: int):
        if global_batch_size % self.num_devices:
            raise ValueError(
                f"Global batch size {global_batch_size} is not divisible by the {self.num_devices} devices; "
                f"use a multiple of {self.num_devices}."
            )

    def prepare(self, abstract_state):
        pass

    def _replicate(self, state):
        n = len(self.devices)

        stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))),
                                         jax.device_get(state))
        # An identity pmap places one copy on each device, sharded the way pmap expects.
        return jax.pmap(lambda x: x, devices=self.devices)(stacked)

    def init(self, init_fn, rng):
        return self._replicate(jax.jit(init_fn)(rng))

    def restore_target(self, abstract_state):
        return abstract_state  # restored on the host, then replicated

    def from_checkpoint(self, state):
        return self._replicate(state)

    def put_batch(self, local_batch: dict) -> dict:
        n = len(self.devices)
        return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in local_batch.items()}

    def compile_step(self, step_fn, compiler_options=None):
        def step(state, batch):
            state, metrics = step_fn(state, batch)
            return state, jax.lax.pmean(metrics, AXIS_NAME)

        pstep = jax.pmap(step, axis_name=AXIS_NAME, devices=self.devices, donate_argnums=0)
        if not compiler_options:
            return pstep
        # jax.pmap takes no compiler options: compile its lowering with them, once per input
        # signature, as jit's own cache would (a batch of another shape gets its own program).
        compiled = {}

        def call(state, batch):
            leaves, treedef = jax.tree_util.tree_flatten((state, batch))
            key = (treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
            if key not in compiled:
                compiled[key] = pstep.lower(state, batch).compile(dict(compiler_options))
            return compiled[key](state, batch)

        return call

    def compile_eval(self, eval_fn):
        peval = jax.pmap(lambda s, b: jax.lax.psum(eval_fn(s, b), AXIS_NAME), axis_name=AXIS_NAME,
                         devices=self.devices)
        return lambda state, batch: _first_replica(peval(state, batch))

    def host_state(self, state):
        # Checkpoints and hooks see one plain copy, the same pytree the mesh form saves.
        return jax.device_get(_first_replica(state))

    def metrics(self, metrics):
        return _first_replica(metrics)


def make(form: str, *, fsdp: bool = False, devices=None):
    if form not in FORMS:
        raise ValueError(f"Unknown parallel form {form!r}; choose one of {FORMS}.")
    return (MeshParallel if form == "mesh" else PmapParallel)(devices, fsdp=fsdp)
