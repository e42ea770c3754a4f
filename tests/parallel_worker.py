"""Run by tests/test_parallel.py in subprocesses with fake CPU devices (XLA_FLAGS set
before JAX starts).

`parallel_worker.py WORKDIR`: 8 devices; prints one JSON object of max |difference| per
comparison. `parallel_worker.py multiprocess WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID
[--sigterm-at-batch N] [--slow-compile SECONDS]`: one process of a multi-process run of
the tiny ViT on synthetic data; prints its results.
"""

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers import synthetic_batch, tiny_task  # noqa: E402
from jaxvision.tasks import gan  # noqa: E402
from jaxvision.train import distributed, loop, parallel  # noqa: E402

STEPS, BATCH = 3, 16


def max_diff(a, b):
    """Max |a - b| over the leaves, once both trees have the same structure and key paths."""
    (leaves_a, tree_a), (leaves_b, tree_b) = jax.tree_util.tree_flatten(a), jax.tree_util.tree_flatten(b)
    paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]  # noqa: E731
    assert tree_a == tree_b and paths(a) == paths(b), f"different trees: {tree_a} vs {tree_b}"
    assert len(leaves_a) == len(leaves_b) > 0
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(leaves_a, leaves_b))


def vit_task(axis_name):
    task = tiny_task(learning_rate=1e-2, total_steps=10)
    return task if axis_name is None else _with_axis(axis_name)


def _with_axis(axis_name):
    from helpers import IMAGE_SHAPE, tiny_vit
    from jaxvision.tasks import classification
    from jaxvision.train import optim

    lr = optim.schedule(1e-2, 10, warmup_steps=2)
    tx = optim.make_optimizer("adamw", lr, weight_decay=0.01, grad_clip_norm=1.0)
    return classification.make_task(tiny_vit(), tx, image_shape=IMAGE_SHAPE, learning_rate=lr, axis_name=axis_name)


def gan_task(axis_name):
    model = gan.GANModelConfig(latent_dim=8, g_width=8, d_width=8)
    G, D = gan.build_networks(model, 28, 1, None, axis_name=axis_name)
    return gan.make_task(G, D, gan.GANOptimConfig(), image_shape=(28, 28, 1), axis_name=axis_name)


def vit_batch(step):
    return synthetic_batch(step, BATCH)


def gan_batch(step):
    rng = np.random.default_rng(step)
    return {"image": np.tanh(rng.normal(size=(BATCH, 28, 28, 1))).astype(np.float32)}


def train(make_task, batch_fn, form):
    task = make_task(form.axis_name)
    rng = jax.random.PRNGKey(0)
    form.prepare(jax.eval_shape(task.init, rng))
    state = form.init(task.init, rng)
    step = form.compile_step(task.train_step)
    for i in range(STEPS):
        state, _ = step(state, form.put_batch(batch_fn(i)))
    return form.host_state(state)


def compare_forms():
    out = {}
    one = [jax.devices()[0]]
    for name, make_task, batch_fn in (("vit", vit_task, vit_batch), ("gan", gan_task, gan_batch)):
        single = train(make_task, batch_fn, parallel.MeshParallel(one))
        out[f"{name}_mesh"] = max_diff(single, train(make_task, batch_fn, parallel.MeshParallel()))
        out[f"{name}_pmap"] = max_diff(single, train(make_task, batch_fn, parallel.PmapParallel()))
        fsdp = parallel.MeshParallel(fsdp=True)
        fsdp.prepare = lambda abstract, f=fsdp: setattr(
            f, "shardings", parallel.state_shardings(abstract, f.mesh, fsdp=True, fsdp_min_size=64))
        out[f"{name}_fsdp"] = max_diff(single, train(make_task, batch_fn, fsdp))
        out[f"{name}_fsdp_sharded"] = sum(
            len(s.spec) > 0 and any(a is not None for a in s.spec) for s in jax.tree_util.tree_leaves(fsdp.shardings))
    return out


def restore_on_more_devices(workdir):
    """3 steps on 1 device with a checkpoint, then resumed on 8 devices (mesh and pmap)
    to step 6; against 6 steps on 1 device."""
    one = [jax.devices()[0]]
    data = lambda start: (vit_batch(i) for i in range(start, 100))  # noqa: E731
    kw = dict(total_steps=6, global_batch_size=BATCH, checkpoint_every=3, log_every=3, progress=False,
              train_data=data)
    loop.train(vit_task(None), workdir=f"{workdir}/straight", parallel_form=parallel.MeshParallel(one), **kw)
    out = {}
    for name, form in (("mesh", parallel.MeshParallel()), ("pmap", parallel.PmapParallel())):
        wd = f"{workdir}/{name}"
        loop.train(vit_task(None), workdir=wd, parallel_form=parallel.MeshParallel(one), **{**kw, "total_steps": 3})
        results = loop.train(vit_task(form.axis_name), workdir=wd, parallel_form=form, **kw)
        assert results["resumed_from_step"] == 3, results
        from jaxvision.train import load_params

        out[f"resume_{name}"] = max_diff(load_params(f"{workdir}/straight"), load_params(wd))
    return out


MULTI_STEPS, MULTI_BATCH = 10, 16


def multiprocess(argv):
    """Each process feeds its rows of the same global batches. `--sigterm-at-batch`: this
    process alone receives SIGTERM while reading that batch. `--slow-compile`: this
    process traces (so compiles) the train step that many seconds after the others."""
    parser = argparse.ArgumentParser()
    for name in ("workdir", "coordinator", "num_processes", "process_id"):
        parser.add_argument(name)
    parser.add_argument("--sigterm-at-batch", type=int)
    parser.add_argument("--slow-compile", type=float, default=0)
    args = parser.parse_args(argv)
    n, pid = int(args.num_processes), int(args.process_id)
    distributed.initialize(args.coordinator, n, pid, timeout_seconds=300)
    task = vit_task(None)
    if args.slow_compile:
        def slow_step(state, batch, step=task.train_step):
            time.sleep(args.slow_compile)  # runs once, while tracing
            return step(state, batch)
        task = dataclasses.replace(task, train_step=slow_step)
    rows = MULTI_BATCH // n

    def data(start):
        for i in range(start, MULTI_STEPS):
            if i == args.sigterm_at_batch:
                signal.raise_signal(signal.SIGTERM)
            batch = synthetic_batch(i, MULTI_BATCH)
            yield {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}

    results = loop.train(task, workdir=args.workdir, train_data=data, total_steps=MULTI_STEPS,
                         global_batch_size=MULTI_BATCH, log_every=1, checkpoint_every=4, progress=False,
                         prefetch_batches=0)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "multiprocess":
        multiprocess(sys.argv[2:])
    else:
        assert jax.device_count() == 8, jax.devices()
        result = {**compare_forms(), **restore_on_more_devices(sys.argv[1])}
        print("RESULT " + json.dumps(result))
