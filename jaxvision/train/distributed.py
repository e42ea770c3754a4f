"""Multi-host start-up on JAX's own runtime (`jax.distributed`), nothing of our own.

Explicit: coordinator address, process count and process id from the command line
or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Automatic: on
clusters JAX detects (SLURM, Cloud TPU, MPI), `jax.distributed.initialize()` with no
arguments finds them itself; we call it when such an environment is present.
"""

from __future__ import annotations

import os
import socket
import time

import jax

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
