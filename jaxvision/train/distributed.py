"""Multi-host start-up on JAX's own runtime (`jax.distributed`), nothing of our own.

Explicit: coordinator address, process count and process id from the command line
or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Automatic: on
clusters JAX detects (SLURM, Cloud TPU, MPI), `jax.distributed.initialize()` with no
arguments finds them itself; we call it when such an environment is present.

Processes of one job meet at `barrier`s of JAX's coordination service (no devices,
a generous timeout). `compile_together` uses one before a program's first run: the
first cross-process collective between a set of devices opens gloo's connections,
and gloo waits only 30 s (fixed in XLA) for the other processes, while on a loaded
machine one process may compile the same step minutes after another.
"""

from __future__ import annotations

import collections
import functools
import os
import socket
import time

import jax
import numpy as np

# Environment variables by which JAX's cluster detection recognises a multi-host job.
_CLUSTER_MARKERS = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_seconds: int = 300) -> bool:
    """Join a multi-process job if one is configured; returns True if it did.

    Must run before anything else touches JAX devices. On CPU, cross-process
    collectives use gloo.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None
    if not explicit and not any(m in os.environ for m in _CLUSTER_MARKERS):
        return False
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(
            "A coordinator address needs the process count and this process's id too: pass "
            "--num-processes and --process-id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)."
        )
    if explicit and process_id != 0:
        _wait_for_coordinator(coordinator_address, timeout_seconds, process_id, num_processes)
    # CPU hosts need a collectives backend for cross-process all-reduce.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_seconds)
    except Exception as err:  # JAX raises XlaRuntimeError / RuntimeError with terse texts
        raise RuntimeError(
            f"Could not join the multi-process job at {coordinator_address or 'the detected cluster'} "
            f"as process {process_id} of {num_processes} within {timeout_seconds}s: {err}. Check that "
            "process 0 is running and that the address and port are reachable from this host."
        ) from err
    return True


def _wait_for_coordinator(address: str, timeout_seconds: float, process_id, num_processes) -> None:
    """Fail with a clear message if process 0's coordinator never becomes reachable.

    JAX's own client aborts the whole process (a C++ fatal error, no Python exception)
    when the coordinator stays unreachable, so we probe the port first.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Coordinator address {address!r} must look like HOST:PORT, e.g. 10.0.0.1:1234.")
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Could not join the multi-process job at {address} as process {process_id} of "
                    f"{num_processes}: nothing answered there within {timeout_seconds}s ({err}). Check that "
                    "process 0 is running and that the address and port are reachable from this host."
                ) from None
            time.sleep(0.5)


# Long enough for the slowest process's compilation on a loaded machine; a process that
# never arrives (crashed) still ends the job with JAX's own error after this.
BARRIER_TIMEOUT_SECONDS = 1800
_barrier_uses: collections.Counter = collections.Counter()


def _client():
    from jax._src import distributed as jax_distributed  # the client has no public accessor

    return jax_distributed.global_state.client


def barrier(name: str, timeout_seconds: int = BARRIER_TIMEOUT_SECONDS) -> None:
    """Wait until every process of the job reaches `barrier(name)`; nothing with one process.

    Every process must call the same barriers in the same order (a use count makes each
    barrier's id unique, so a name may be reused)."""
    client = _client()
    if jax.process_count() == 1 or client is None:
        return
    _barrier_uses[name] += 1
    client.wait_at_barrier(f"jaxvision/{name}/{_barrier_uses[name]}", timeout_in_ms=timeout_seconds * 1000)


def compile_together(fn, name: str):
    """`fn` (a `jax.jit` or `jax.pmap` function) whose first call compiles it, waits at
    `barrier(name)` for the other processes to have compiled theirs, and only then runs.

    With one process `fn` itself is returned. A function that cannot be compiled ahead
    (no `.lower`) meets the others before its first call, compilation included."""
    if jax.process_count() == 1:
        return fn
    first = True

    @functools.wraps(fn)
    def call(*args):
        nonlocal first
        if not first:
            return fn(*args)
        first = False
        if not hasattr(fn, "lower"):
            barrier(name)
            return fn(*args)
        compiled = fn.lower(*args).compile()
        barrier(name)
        return compiled(*args)  # later calls find this executable in jit's cache

    return call


def any_process(flag: bool) -> jax.Array:
    """True on every process if `flag` is True on any, as a replicated scalar computed on
    the devices (asynchronously: read it later to keep the host ahead of the devices)."""
    local = np.full((jax.local_device_count(),), bool(flag))
    return _or_over_devices()(jax.make_array_from_process_local_data(_devices_sharding(), local))


@functools.cache
def _devices_sharding():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))


@functools.cache
def _or_over_devices():
    replicated = _devices_sharding().update(spec=jax.sharding.PartitionSpec())
    return compile_together(jax.jit(lambda flags: flags.any(), out_shardings=replicated), "any_process")
