"""The one training loop, shared by every task.

A task supplies pure functions: `init(rng) -> TrainState`, `train_step(state, batch)
-> (state, metrics)` and optionally `eval_step(state, batch) -> metric sums` plus
`hooks` (sample grids, Fréchet distance). The loop supplies everything around them:
the device mesh, resume from the newest checkpoint, periodic checkpoints, metric
logs, a progress bar, plots, preemption handling, and `results.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from jaxvision.train import parallel
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.logging import MetricWriter, read_metrics
from jaxvision.train.plots import plot_metrics
from jaxvision.train.prefetch import prefetch
from jaxvision.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The run settings every task's config has (ClassificationConfig and GANConfig extend
    it): they go to `train` unchanged, through `loop_args`."""

    seed: int = 0
    global_batch_size: int = 128
    total_steps: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    parallel: str = "mesh"  # "mesh" (jit + NamedSharding) or "pmap"
    progress: bool = True

    def loop_args(self) -> dict:
        """`train`'s keyword arguments that come straight from these fields (the parallel
        form and the batch the data pipeline reads are the task's to build)."""
        return dict(seed=self.seed, total_steps=self.total_steps, log_every=self.log_every,
                    checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                    progress=self.progress)


@dataclasses.dataclass(frozen=True)
class Task:
    init: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    # Returns per-batch *sums* with a "count" entry; the loop divides at the end.
    eval_step: Callable[[TrainState, dict], dict] | None = None
    # Called on every process at eval points as hook(step, state); returns metrics to log.
    hooks: Sequence[Callable[[int, TrainState], dict | None]] = ()


class NonFiniteLossError(FloatingPointError):
    pass


# 128 + SIGTERM: what a process killed by SIGTERM reports, so schedulers requeue the job.
PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
    """Raised after SIGTERM once the checkpoint is saved; exits with code 143."""


def _check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"Cannot write to workdir {str(workdir)!r} ({err.strerror}). Pass a writable --workdir."
        ) from err


@contextlib.contextmanager
def _workdir_lock(workdir: Path, enabled: bool):
    """One run per workdir: a second run would interleave checkpoints and logs."""
    if not enabled:
        yield
        return
    with open(workdir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"Workdir {str(workdir)!r} is in use by another run ({f.read().strip() or 'unknown pid'}). "
                "Wait for it to finish, or pass another --workdir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


class _Preemption:
    """SIGTERM (what schedulers send before preempting) -> save a checkpoint, then exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(sums: dict, count: int) -> dict:
    return {k: float(v) / count for k, v in jax.device_get(sums).items()}


def evaluate(eval_fn, state, batches: Iterable, form, prefix: str) -> dict:
    """Sum a task's eval metrics over every batch, then divide by the example count."""
    totals = None
    for batch in batches:
        sums = eval_fn(state, form.put_batch(batch))
        totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {f"{prefix}/{k}": float(v) / count for k, v in totals.items()}


def train(
    task: Task,
    *,
    workdir,
    train_data: Callable[[int], Iterator[dict]],
    total_steps: int,
    global_batch_size: int,
    seed: int = 0,
    eval_data: Callable[[], Iterable[dict]] | None = None,
    eval_prefix: str = "test",
    log_every: int = 50,
    eval_every: int = 0,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    parallel_form="mesh",
    fsdp: bool = False,
    config: dict | None = None,
    progress: bool = True,
    prefetch_batches: int = 2,
) -> dict:
    """Train `task` to `total_steps`, resuming from `workdir` if it holds a checkpoint.

    `train_data(start_step)` returns this process's batches from `start_step` on, so a
    resumed run continues with exactly the data an uninterrupted run would have seen.
    `parallel_form`: "mesh" (jit + NamedSharding), "pmap", or a strategy object from
    `jaxvision.train.parallel.make`; the task must be built with its `axis_name`.
    `prefetch_batches`: batches put on the devices ahead of the running step (0: none).
    Returns the results dict also written to `workdir/results.json`.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir).absolute()
    primary = jax.process_index() == 0
    _check_workdir(workdir)
    form = parallel.make(parallel_form, fsdp=fsdp) if isinstance(parallel_form, str) else parallel_form
    form.check_batch(global_batch_size)

    with _workdir_lock(workdir, primary), _Preemption() as preemption:
        rng = jax.random.PRNGKey(seed)
        abstract = jax.eval_shape(task.init, rng)
        form.prepare(abstract)
        checkpointer = Checkpointer(workdir / "checkpoints", save_every=checkpoint_every, keep=keep_checkpoints)
        restored = checkpointer.restore(form.restore_target(abstract))
        if restored is None:
            state = form.init(task.init, rng)
            start_step = 0
        else:
            state, _, start_step = restored
            state = form.from_checkpoint(state)
            print(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}", file=sys.stderr)

        writer = MetricWriter(workdir, enabled=primary, resume_step=start_step)
        if primary:
            _write_run_info(workdir, config, form, start_step)
        step_fn = form.compile_step(task.train_step)
        eval_fn = form.compile_eval(task.eval_step) if task.eval_step else None

        def run_eval(step, state):
            metrics = {}
            if eval_fn is not None and eval_data is not None:
                metrics.update(evaluate(eval_fn, state, eval_data(), form, eval_prefix))
            if task.hooks:
                host = form.host_state(state)
                for hook in task.hooks:
                    metrics.update(hook(step, host) or {})
            if metrics:
                writer.write(step, metrics)
            return metrics

        data = prefetch(train_data(start_step), form.put_batch, prefetch_batches)
        bar = _progress(start_step, total_steps, enabled=progress and primary)
        sums, n_sum, last_good = None, 0, start_step
        timed_images, timed_seconds, t_interval = 0, 0.0, None
        last_train, last_eval = {}, {}
        step = start_step
        try:
            while step < total_steps:
                state, metrics = step_fn(state, next(data))
                metrics = form.metrics(metrics)
                step += 1
                sums = metrics if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, metrics)
                n_sum += 1
                if t_interval is None:  # the first step compiles: time from after it
                    jax.block_until_ready(metrics)
                    t_interval, n_timed = time.perf_counter(), 0
                else:
                    n_timed += 1
                bar.update(1)
                save_due = step % checkpoint_every == 0 or step == total_steps or preemption.requested
                eval_due = (eval_every and step % eval_every == 0) or step == total_steps
                if step % log_every == 0 or save_due or eval_due:
                    last_train = _mean_metrics(sums, n_sum)
                    now = time.perf_counter()
                    timed_images += n_timed * global_batch_size
                    timed_seconds += now - t_interval
                    t_interval, n_timed = now, 0
                    if not all(math.isfinite(v) for v in last_train.values()):
                        raise NonFiniteLossError(
                            f"Non-finite training metrics {last_train} in steps {step - n_sum + 1}-{step}. "
                            f"Stopped without saving; the last good checkpoint (step {last_good}) in "
                            f"{checkpointer.directory} is kept. Lower the learning rate or enable gradient "
                            "clipping, then rerun the same command: it resumes from that checkpoint."
                        )
                    ips = timed_images / timed_seconds if timed_seconds else float("nan")
                    writer.write(step, {**{f"train/{k}": v for k, v in last_train.items()},
                                        "train/images_per_second": ips})
                    bar.set_postfix(loss=f"{last_train.get('loss', float('nan')):.4f}", img_s=f"{ips:.0f}")
                    sums, n_sum = None, 0
                if eval_due:
                    last_eval = run_eval(step, state) or last_eval
                if save_due:
                    if preemption.requested:
                        checkpointer.wait()  # let a save still in flight finish first
                    checkpointer.save(step, form.host_state(state), {"step": step}, force=True)
                    last_good = step
                if eval_due or save_due:  # keep evaluation and saving out of img/s
                    t_interval = time.perf_counter()
                if preemption.requested:
                    checkpointer.wait()
                    if step not in checkpointer.all_steps():
                        raise RuntimeError(f"SIGTERM: the checkpoint at step {step} was not written; "
                                           f"the newest one is {checkpointer.all_steps()[-1:]}.")
                    print(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume.",
                          file=sys.stderr)
                    raise Preempted(PREEMPTED_EXIT_CODE)
        finally:
            bar.close()
            checkpointer.close()
            writer.close()

        results = {
            "steps": step,
            "resumed_from_step": start_step,
            "wall_seconds": time.perf_counter() - t_start,
            "train_images_per_second": timed_images / timed_seconds if timed_seconds else None,
            **{f"train_{k}": v for k, v in last_train.items()},
            **{k.replace("/", "_"): v for k, v in last_eval.items()},
        }
        if primary:
            (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            plot_metrics(read_metrics(workdir), workdir / "plots")
        return results


def _progress(start, total, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)


def _write_run_info(workdir: Path, config: dict | None, form, start_step: int) -> None:
    info = {
        "command": " ".join(sys.argv),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "parallel": form.name,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "resumed_from_step": start_step,
    }
    (workdir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    if config is not None:
        (workdir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
