"""SIGTERM (what schedulers send before preempting a job) -> save a checkpoint, exit 143.

The loop asks `should_stop()` once after each step and uses that one answer both to save
and to stop: reading the signal flag twice would let a signal that lands in between skip
the save and still stop. With several processes the save is collective, so they must
stop at the same step although the signal may reach only one of them: each step every
process contributes its flag to an all-process OR on the devices, and the result is read
one step later (by then it is computed, so the host stays ahead of the devices); every
process reads the same value, so all stop after the same step.
"""

from __future__ import annotations

import signal

import jax

from jaxvision.train import distributed

# 128 + SIGTERM: what a process killed by SIGTERM reports, so schedulers requeue the job.
PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
    """Raised after SIGTERM once the checkpoint is saved; exits with code 143."""


class Preemption:
    """Context manager: catches SIGTERM while training; `should_stop()` says when to stop."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._pending = None  # the all-process OR dispatched after the previous step

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self) -> bool:
        """Whether to save and stop after the step just run; the same on every process."""
        if jax.process_count() == 1:
            return self.requested
        pending, self._pending = self._pending, distributed.any_process(self.requested)
        return pending is not None and bool(pending.addressable_data(0))

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
