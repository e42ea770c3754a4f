"""Input pipeline speed against what training consumes, and what feeding it costs training.

    PYTHONPATH=. python benchmarks/input_pipeline.py --out runs/bench/input_pipeline.json

Sides (each its own child process, timed bursts interleaved, best-of-N; benchmarks/common.py):

  pipeline           jaxvision.data.train_iterator alone (the main job's dataset, batch and
                     augmentation): host batches per second, as img/s.
  pipeline_threadsK  the same with its own pool of K threads (train_iterator(threads=K)).
  train_synthetic    the main job's ViT step (experiments/vit_fashion_mnist.py, micro-batches
                     included) on one fixed device batch: what training consumes.
  train_fedX         the same step fed batch by batch from the pipeline, as the loop does
                     (next(data) -> put_batch -> step): whether the pipeline's threads slow
                     XLA down on a small CPU.

Target: pipeline >= 5x train_synthetic, and train_fed close to train_synthetic. Needs the
prepared tfds dataset (README: set-up); TensorFlow must be installed (it is not on the GPU
machines - this benchmark is for the CPU host). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


# (image shape, classes) of datasets whose synthetic side needs no TensorFlow import.
_KNOWN_SHAPES = {"fashion_mnist": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10)}


def _main_job_config(overrides: dict):
    import dataclasses

    from experiments.vit_fashion_mnist import get_config

    config = get_config()
    model = dataclasses.replace(config.model, **overrides.get("model", {}))
    top = {k: v for k, v in overrides.items() if k != "model"}
    return dataclasses.replace(config, model=model, **top)


def _iterator(config, threads, data_dir):
    from jaxvision import data

    return data.train_iterator(config.data.dataset, config.data.train_split,
                               global_batch_size=config.global_batch_size, seed=config.seed,
                               data_dir=data_dir, augment=config.data.augment, threads=threads)


class _Pipeline(common.Bench):
    def __init__(self, overrides, threads, data_dir):
        config = _main_job_config(overrides)
        self.it = _iterator(config, threads, data_dir)
        self.items_per_call = config.global_batch_size
        self.threads = threads

    def run(self, n):
        for _ in range(n):
            next(self.it)

    def info(self):
        return {"pipeline_threads": self.threads}


class _Train(common.Bench):
    def __init__(self, overrides, fed: bool, threads, data_dir):
        import jax
        import numpy as np

        from jaxvision.tasks import classification as cls
        from jaxvision.train import parallel

        config = _main_job_config(overrides)
        if fed or config.data.dataset not in _KNOWN_SHAPES:
            from jaxvision import data

            info = data.dataset_info(config.data.dataset, data_dir)
            image_shape, num_classes = info.image_shape, info.num_classes
        else:  # no TensorFlow import in the synthetic side
            image_shape, num_classes = _KNOWN_SHAPES[config.data.dataset]
        model = cls.build_model(config.model, num_classes)
        tx, lr = cls.build_optimizer(config.optim, config.total_steps)
        task = cls.make_task(model, tx, image_shape=image_shape, learning_rate=lr,
                             label_smoothing=config.optim.label_smoothing, micro_batches=config.micro_batches)
        self.form = form = parallel.make("mesh")
        form.prepare(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
        self.state = form.init(task.init, jax.random.PRNGKey(0))
        self.step = form.compile_step(task.train_step)
        self.jax, self.fed = jax, fed
        b = config.global_batch_size
        self.items_per_call = b
        if fed:
            self.it = _iterator(config, threads, data_dir)
        else:
            rng = np.random.default_rng(0)
            self.batch = form.put_batch({
                "image": rng.uniform(-1, 1, (b, *image_shape)).astype(np.float32),
                "label": rng.integers(0, num_classes, b).astype(np.int32)})
        self.threads = threads
        self.micro_batches = config.micro_batches

    def run(self, n):
        out = None
        for _ in range(n):
            batch = self.form.put_batch(next(self.it)) if self.fed else self.batch
            self.state, out = self.step(self.state, batch)
        self.jax.block_until_ready(out)

    def info(self):
        import jax

        return {"framework": f"jax {jax.__version__}", "fed_by_pipeline": self.fed,
                "pipeline_threads": self.threads, "micro_batches": self.micro_batches}


def pipeline(overrides: dict, threads=None, data_dir=None):
    return _Pipeline(overrides, threads, data_dir)


def train(overrides: dict, fed: bool, threads=None, data_dir=None):
    return _Train(overrides, fed, threads, data_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="none", help="pipeline thread settings to compare, e.g. none,1: 'none' = "
                   "TensorFlow's defaults, K = a private pool of K threads")
    p.add_argument("--micro-batches", type=int, default=None, help="override the main job's micro_batches")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--model", default=None, help="JSON overrides of the main job's model config (tests)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-train", action="store_true", help="time the pipeline only")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--min-burst-seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/bench/input_pipeline.json")
    args = p.parse_args(argv)

    import json

    overrides = {}
    if args.micro_batches is not None:
        overrides["micro_batches"] = args.micro_batches
    if args.batch_size is not None:
        overrides["global_batch_size"] = args.batch_size
    if args.model:
        overrides["model"] = json.loads(args.model)
    settings = [None if t == "none" else int(t) for t in args.threads.split(",")]
    sides = {}
    for t in settings:
        suffix = "" if t is None else f"_threads{t}"
        sides[f"pipeline{suffix}"] = common.start(f"pipeline{suffix}", "benchmarks.input_pipeline:pipeline",
                                                  dict(overrides=overrides, threads=t, data_dir=args.data_dir))
    if not args.no_train:
        sides["train_synthetic"] = common.start("train_synthetic", "benchmarks.input_pipeline:train",
                                                dict(overrides=overrides, fed=False, data_dir=args.data_dir))
        for t in settings:
            suffix = "" if t is None else f"_threads{t}"
            sides[f"train_fed{suffix}"] = common.start(
                f"train_fed{suffix}", "benchmarks.input_pipeline:train",
                dict(overrides=overrides, fed=True, threads=t, data_dir=args.data_dir))
    print(f"input pipeline vs training; load {common.load_average()}")
    try:
        r = common.compare(sides, steps=args.steps, rounds=args.rounds, min_seconds=args.min_burst_seconds)
    finally:
        for w in sides.values():
            w.close()
    for name in sides:
        common.print_side(f"  {name}", r[name])
    if "train_synthetic" in r:
        consumed = r["train_synthetic"]["best"]
        r["pipeline_over_training"] = {n: r[n]["best"] / consumed for n in sides if n.startswith("pipeline")}
        r["fed_over_synthetic_training"] = {n: r[n]["best"] / consumed for n in sides if n.startswith("train_fed")}
        print(f"  pipeline / training consumption: "
              f"{ {k: round(v, 2) for k, v in r['pipeline_over_training'].items()} }")
        print(f"  fed training / synthetic training: "
              f"{ {k: round(v, 2) for k, v in r['fed_over_synthetic_training'].items()} }")
    print(f"  load average before/after {r['load_average_before_after']}")
    result = {"config": {**vars(args)}, "machine": common.machine(), "results": r}
    common.write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
