"""Recipe search for the main job (experiments/vit_fashion_mnist.py), run on a GPU.

The main job must reach its accuracy inside a fixed CPU time, so a recipe is judged
by test accuracy after as many steps as the CPU can take in that time. Trying each
recipe on the 2-core CPU would take the whole budget for one point; this script trains
the same model, optimizer and step function (`jaxvision.tasks.classification`) on a GPU,
many trials at once, and reports test accuracy per trial. The chosen recipe is then
measured for real on the CPU with the main command; only that CPU run's numbers go in
the README.

What differs from the real run, on purpose: the data come from the IDX files as NumPy
arrays (the GPU machines have no TensorFlow), shuffling and flips are drawn with JAX on
the device instead of tf.data, and matmuls run at the GPU's default precision. So a
trial's accuracy is a seed-like draw near the CPU run's, good for ranking recipes.

    python experiments/sweeps/vit_fashion_mnist_recipe.py --data DIR --out OUT --workers 6 \
        --trials experiments/sweeps/trials.json

`trials.json`: a list of {"name": ..., "overrides": ["model.width=96", ...]} applied to
the default config (`total_steps` among them). Results: OUT/trials-<worker>.jsonl.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir: Path):
    def images(name):
        return read_idx(data_dir / f"{name}-images-idx3-ubyte.gz")[..., None]

    def labels(name):
        return read_idx(data_dir / f"{name}-labels-idx1-ubyte.gz").astype(np.int32)

    return images("train"), labels("train"), images("t10k"), labels("t10k")


def augment(key, images, name: str):
    """Device-side versions of jaxvision.data.augment's flip and pad_crop_flip."""
    import jax
    import jax.numpy as jnp

    if name == "none":
        return images
    flip_key, crop_key = jax.random.split(key)
    n, h, w, _ = images.shape
    if name == "pad_crop_flip":
        padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 9)
        images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, images.shape[-1])))(
            padded, offsets)
    elif name != "flip":
        raise ValueError(f"augment {name!r} is not modelled here")
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def run_trial(trial: dict, arrays, chunk: int = 100) -> dict:
    import jax
    import jax.numpy as jnp

    from experiments.vit_fashion_mnist import get_config
    from jaxvision import config as config_lib
    from jaxvision.tasks import classification as cls

    cfg = config_lib.apply_overrides(get_config(trial.get("preset", "default")), trial["overrides"])
    x_train, y_train, x_test, y_test = arrays
    model = cls.build_model(cfg.model, 10)
    tx, lr = cls.build_optimizer(cfg.optim, cfg.total_steps)
    task = cls.make_task(model, tx, image_shape=(28, 28, 1), learning_rate=lr,
                         label_smoothing=cfg.optim.label_smoothing, micro_batches=cfg.micro_batches)
    state = task.init(jax.random.key(cfg.seed))
    batch, steps = cfg.global_batch_size, cfg.total_steps

    # Epoch permutations drawn on the host, as the real pipeline does (global shuffle).
    rng = np.random.default_rng(cfg.seed)
    per_epoch = len(x_train) // batch
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(len(x_train))[: per_epoch * batch] for _ in range(epochs)])
    order = jnp.asarray(order[: steps * batch].reshape(steps, batch))
    images = jnp.asarray(x_train, jnp.float32) * (2.0 / 255.0) - 1.0
    labels = jnp.asarray(y_train)
    aug_key = jax.random.key(cfg.seed + 1)

    @jax.jit
    def chunk_fn(state, idx):
        def body(state, i):
            rows = order[i]
            x = augment(jax.random.fold_in(aug_key, i), images[rows], cfg.data.augment)
            state, metrics = task.train_step(state, {"image": x, "label": labels[rows]})
            return state, metrics["loss"]
        return jax.lax.scan(body, state, idx)

    @jax.jit
    def evaluate(state, x, y):
        out = task.eval_step(state, {"image": x, "label": y})
        return out["accuracy"], out["loss"]

    x_eval = jnp.asarray(x_test, jnp.float32) * (2.0 / 255.0) - 1.0
    y_eval = jnp.asarray(y_test)
    t0 = time.time()
    curve = []
    evals = sorted(set([steps] + [s for s in trial.get("eval_at", []) if s < steps]))
    done = 0
    losses = []
    for stop in evals:
        while done < stop:
            n = min(chunk, stop - done)
            state, loss = chunk_fn(state, jnp.arange(done, done + n))
            losses.append(loss)
            done += n
        correct, total_loss = 0.0, 0.0
        for s in range(0, len(x_eval), 2000):
            c, l = evaluate(state, x_eval[s: s + 2000], y_eval[s: s + 2000])
            correct += float(c)
            total_loss += float(l)
        curve.append({"step": stop, "test_accuracy": correct / len(x_eval), "test_loss": total_loss / len(x_eval)})
    final_loss = float(jnp.mean(jnp.concatenate(losses)[-200:]))
    return {
        "name": trial["name"], "overrides": trial["overrides"], "steps": steps,
        "epochs": steps * batch / len(x_train), "test_accuracy": curve[-1]["test_accuracy"],
        "curve": curve, "train_loss_last200": final_loss, "seconds": time.time() - t0,
        "params": int(sum(p.size for p in jax.tree.leaves(state.params))),
    }


def worker(args, trials):
    arrays = load(Path(args.data))
    out = Path(args.out) / f"trials-{args.worker}.jsonl"
    for i, trial in enumerate(trials):
        if i % args.workers != args.worker:
            continue
        try:
            result = run_trial(trial, arrays)
        except Exception as err:  # one bad trial must not end the sweep
            result = {"name": trial["name"], "error": repr(err)}
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps({k: result.get(k) for k in ("name", "test_accuracy", "seconds", "error")}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with the four Fashion-MNIST IDX .gz files")
    parser.add_argument("--trials", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the device")
    parser.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    trials = json.loads(Path(args.trials).read_text())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.worker >= 0 or args.workers == 1:
        args.worker = max(args.worker, 0)
        worker(args, trials)
        return
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", str(w)], env=env)
             for w in range(args.workers)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
