"""The one training loop, shared by every task.

A task supplies pure functions: `init(rng) -> TrainState`, `train_step(state, batch)
-> (state, metrics)`, optionally `eval_step(state, batch) -> statistics` with a
`finalize(totals) -> metrics`, and `hooks` (sample grids, Fréchet distance). The loop
supplies everything around them: the device mesh, resume from the newest checkpoint,
periodic actions (log, evaluate, save, stop on preemption), a progress bar, plots and
`results.json`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Mapping, Sequence

import jax

from jaxvision.train import distributed, parallel
from jaxvision.train import workdir as workdir_lib
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.logging import MetricWriter, plain, read_metrics
from jaxvision.train.plots import plot_metrics
from jaxvision.train.preemption import PREEMPTED_EXIT_CODE, Preempted, Preemption
from jaxvision.train.prefetch import prefetch
from jaxvision.train.state import TrainState

__all__ = ["LoopConfig", "NonFiniteLossError", "PREEMPTED_EXIT_CODE", "Preempted", "Task", "evaluate", "train"]


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
    # Statistics of one batch (any pytree); the loop sums them over the evaluation set.
    eval_step: Callable[[TrainState, dict], dict] | None = None
    # Called on every process at eval points as hook(step, state); returns metrics to log.
    hooks: Sequence[Callable[[int, TrainState], dict | None]] = ()
    # totals -> {name: metric} (mIoU from a confusion matrix, AP, ...). None: the totals
    # are a dict of sums with a "count" entry, and each metric is its sum / count.
    finalize: Callable[[dict], dict] | None = None
    # The train metrics shown in the progress bar.
    progress_metrics: tuple[str, ...] = ("loss",)
    # step -> images trained in steps 0..step, for img/s where the trained batch is not the
    # batch read (a progressive GAN trains the first rows at some levels). None: step x batch.
    images_seen: Callable[[int], int] | None = None
    # XLA options the train step is compiled with (jax.jit's `compiler_options`, e.g. which
    # CPU kernel library runs its reductions). None: XLA's defaults, and their bits.
    compiler_options: Mapping[str, str] | None = None


class NonFiniteLossError(FloatingPointError):
    pass


def evaluate(eval_fn, state, batches: Iterable, form, prefix: str, finalize=None) -> dict:
    """Sum a task's eval statistics over every batch, then turn them into metrics:
    `finalize(totals)`, or each sum divided by the "count" entry when there is none."""
    totals = None
    for batch in batches:
        stats = eval_fn(state, form.put_batch(batch))
        totals = stats if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, stats)
    if totals is None:
        raise ValueError("The evaluation data yielded no batches; check the eval split (e.g. 'test[:1000]').")
    totals = jax.device_get(totals)
    if finalize is not None:
        return {f"{prefix}/{k}": plain(v) for k, v in finalize(totals).items()}
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
    eval_steps: Collection[int] = (),
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
    Evaluation runs every `eval_every` steps (0: never), at each step in `eval_steps`
    (a progressive GAN's phase ends) and at the last step.
    Returns the results dict also written to `workdir/results.json`; a run that had
    already finished returns (and keeps) the results it had.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir).absolute()
    primary = jax.process_index() == 0
    workdir_lib.check_writable(workdir)
    form = parallel.make(parallel_form, fsdp=fsdp) if isinstance(parallel_form, str) else parallel_form
    form.check_batch(global_batch_size)

    with workdir_lib.lock(workdir, primary), Preemption() as preemption:
        rng = jax.random.PRNGKey(seed)
        abstract = jax.eval_shape(task.init, rng)
        form.prepare(abstract)
        checkpointer = Checkpointer(workdir / "checkpoints", save_every=checkpoint_every, keep=keep_checkpoints)
        restored = checkpointer.restore(form.restore_target(abstract))
        if restored is None:
            state, metadata, start_step = form.init(task.init, rng), {}, 0
        else:
            state, metadata, start_step = restored
            state = form.from_checkpoint(state)
            print(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}", file=sys.stderr)
        if start_step >= total_steps:
            checkpointer.close()
            return _already_finished(workdir, metadata, start_step, primary)

        writer = MetricWriter(workdir, enabled=primary, resume_step=start_step)
        if primary:
            workdir_lib.write_run_info(workdir, config, form, start_step)
        step_fn = distributed.compile_together(form.compile_step(task.train_step, task.compiler_options), "train_step")
        eval_fn = distributed.compile_together(form.compile_eval(task.eval_step), "eval_step") \
            if task.eval_step else None
        data = prefetch(train_data(start_step), form.put_batch, prefetch_batches)
        bar = _progress(start_step, total_steps, enabled=progress and primary)
        run = _Actions(task, form, writer, checkpointer, bar, global_batch_size,
                       lambda step, state: _evaluate_all(task, eval_fn, eval_data, eval_prefix, form, step, state),
                       start_step, t_start, metadata.get("results", {}).get("wall_seconds_total", 0.0))
        step = start_step
        try:
            while step < total_steps:
                state, metrics = step_fn(state, next(data))
                step += 1
                run.meter.add(form.metrics(metrics), step)
                bar.update(1)
                if step == total_steps:  # the bar's last time and rate are training's, not the final evaluation's
                    bar.close()
                stop = preemption.should_stop()  # read once: the save and the stop agree
                save_due = step % checkpoint_every == 0 or step == total_steps or stop
                eval_due = bool(eval_every and step % eval_every == 0) or step in eval_steps or step == total_steps
                if step % log_every == 0 or save_due or eval_due:
                    run.log(step)
                if eval_due:
                    run.evaluate(step, state)
                if save_due:
                    run.save(step, state, preempted=stop)
                if eval_due or save_due:
                    run.meter.restart_clock(step)  # keep evaluation and saving out of img/s
                if stop:
                    run.stop(step)
        finally:
            bar.close()
            checkpointer.close()
            writer.close()

        results = run.results(step)
        if primary:
            workdir_lib.write_results(workdir, results)
            plot_metrics(read_metrics(workdir), workdir / "plots")
        return results


def _already_finished(workdir: Path, metadata: dict, step: int, primary: bool) -> dict:
    results, changed = workdir_lib.finished_results(workdir, metadata, step)
    print(f"The run in {workdir} had already finished at step {step}; its results are kept.", file=sys.stderr)
    if primary and changed:
        workdir_lib.write_results(workdir, results)
    return results


def _evaluate_all(task: Task, eval_fn, eval_data, eval_prefix: str, form, step: int, state) -> dict:
    """The task's evaluation and its hooks' metrics at this step (empty if it has none)."""
    metrics = {}
    if eval_fn is not None and eval_data is not None:
        metrics.update(evaluate(eval_fn, state, eval_data(), form, eval_prefix, task.finalize))
    if task.hooks:
        host = form.host_state(state)
        for hook in task.hooks:
            metrics.update(hook(step, host) or {})
    return metrics


class _Meter:
    """The train metrics summed on the devices since the last log, and images per second
    over training steps only: the first step (compilation) and the time spent evaluating
    and saving are left out. `images_seen(step)`: images trained in steps 0..step."""

    def __init__(self, images_seen: Callable[[int], int]):
        self.images_seen = images_seen
        self.sums, self.count = None, 0
        self.images, self.seconds = 0, 0.0
        self.t_interval, self.step_timed, self.step = None, None, None

    def add(self, metrics, step: int) -> None:
        self.sums = metrics if self.sums is None else jax.tree_util.tree_map(lambda a, b: a + b, self.sums, metrics)
        self.count += 1
        self.step = step
        if self.t_interval is None:  # the first step compiles: time from after it
            jax.block_until_ready(metrics)
            self.restart_clock(step)

    def take(self) -> tuple[dict, int]:
        """(means of the metrics summed since the last take, how many steps they cover)."""
        means = {k: float(v) / self.count for k, v in jax.device_get(self.sums).items()}
        now = time.perf_counter()
        self.images += self.images_seen(self.step) - self.images_seen(self.step_timed)
        self.seconds += now - self.t_interval
        self.t_interval, self.step_timed = now, self.step
        count, self.sums, self.count = self.count, None, 0
        return means, count

    def restart_clock(self, step: int) -> None:
        self.t_interval, self.step_timed = time.perf_counter(), step

    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


class _Actions:
    """The periodic actions of one `train` call (log, evaluate, save, stop) and what they
    share: the last metrics of each kind, the last good checkpoint, the clock."""

    def __init__(self, task, form, writer, checkpointer, bar, global_batch_size, evaluate_fn, start_step,
                 t_start, prior_seconds):
        self.task, self.form, self.writer, self.checkpointer, self.bar = task, form, writer, checkpointer, bar
        self.meter = _Meter(task.images_seen or (lambda step: step * global_batch_size))
        self.evaluate_fn = evaluate_fn
        self.start_step, self.last_good = start_step, start_step
        self.t_start, self.prior_seconds = t_start, prior_seconds
        self.last_train, self.last_eval = {}, {}

    def log(self, step: int) -> None:
        means, count = self.meter.take()
        if not all(math.isfinite(v) for v in means.values()):
            raise NonFiniteLossError(
                f"Non-finite training metrics {means} in steps {step - count + 1}-{step}. "
                f"Stopped without saving; the last good checkpoint (step {self.last_good}) in "
                f"{self.checkpointer.directory} is kept. Lower the learning rate or enable gradient "
                "clipping, then rerun the same command: it resumes from that checkpoint."
            )
        ips = self.meter.images_per_second()
        ips = float("nan") if ips is None else ips
        self.writer.write(step, {**{f"train/{k}": v for k, v in means.items()}, "train/images_per_second": ips})
        shown = {k: f"{means.get(k, float('nan')):.4f}" for k in self.task.progress_metrics}
        self.bar.set_postfix(**shown, img_s=f"{ips:.0f}")
        self.last_train = means

    def evaluate(self, step: int, state) -> None:
        metrics = self.evaluate_fn(step, state)
        if metrics:
            self.writer.write(step, metrics)
            self.last_eval = {k: plain(v) for k, v in metrics.items()}  # results.json and checkpoints hold JSON

    def save(self, step: int, state, *, preempted: bool) -> None:
        if preempted:
            self.checkpointer.wait()  # let a save still in flight finish first
        # The results so far travel with the checkpoint: a run restarted after its last
        # step returns them, and the next process adds its time to wall_seconds_total.
        metadata = {"step": step, "results": self.results(step)}
        self.checkpointer.save(step, self.form.host_state(state), metadata, force=True)
        self.last_good = step

    def stop(self, step: int) -> None:
        self.checkpointer.wait()
        if step not in self.checkpointer.all_steps():
            raise RuntimeError(f"SIGTERM: the checkpoint at step {step} was not written; "
                               f"the newest one is {self.checkpointer.all_steps()[-1:]}.")
        print(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume.", file=sys.stderr)
        raise Preempted(PREEMPTED_EXIT_CODE)

    def results(self, step: int) -> dict:
        seconds = time.perf_counter() - self.t_start
        return {
            "steps": step,
            "resumed_from_step": self.start_step,
            "wall_seconds": seconds,  # this process
            "wall_seconds_total": self.prior_seconds + seconds,  # and those it resumed from
            "train_images_per_second": self.meter.images_per_second(),
            **{f"train_{k}": v for k, v in self.last_train.items()},
            **{k.replace("/", "_"): v for k, v in self.last_eval.items()},
        }


def _progress(start, total, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)
