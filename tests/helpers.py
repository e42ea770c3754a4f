"""Small shared pieces for the tests: a tiny ViT task on synthetic data."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxvision.models import ViT
from jaxvision.tasks import classification
from jaxvision.train import optim

IMAGE_SHAPE = (8, 8, 1)


def tiny_vit(**kw):
    cfg = dict(variant=None, width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4, pool="gap")
    cfg.update(kw)
    return ViT(num_classes=4, **cfg)


def tiny_task(learning_rate=1e-2, total_steps=100, micro_batches=1, **model_kw):
    lr = optim.schedule(learning_rate, total_steps, warmup_steps=2)
    tx = optim.make_optimizer("adamw", lr, weight_decay=0.01, grad_clip_norm=1.0)
    return classification.make_task(tiny_vit(**model_kw), tx, image_shape=IMAGE_SHAPE, learning_rate=lr,
                                    micro_batches=micro_batches)


def synthetic_batch(step, batch_size=8, seed=0):
    """A learnable batch: a fixed random template per class plus noise."""
    templates = np.random.default_rng(1234).normal(0, 1, (4, *IMAGE_SHAPE)).astype(np.float32)
    rng = np.random.default_rng([seed, step])
    labels = rng.integers(0, 4, batch_size).astype(np.int32)
    images = templates[labels] + rng.normal(0, 0.5, (batch_size, *IMAGE_SHAPE)).astype(np.float32)
    return {"image": images, "label": labels}


def synthetic_data(start_step, batch_size=8, seed=0, fail_at=None):
    step = start_step
    while True:
        if fail_at is not None and step == fail_at:
            raise KeyboardInterrupt(f"simulated crash before step {step + 1}")
        yield synthetic_batch(step, batch_size, seed)
        step += 1


def tree_difference(a, b) -> str | None:
    """The first way pytrees `a` and `b` differ, or None: structure first (node types,
    keys, leaf count), then each leaf's shape, dtype and values (NaNs equal), so a
    truncated tree or a renamed key is never equal to the original."""
    import jax

    paths_a, def_a = jax.tree_util.tree_flatten_with_path(a)
    paths_b, def_b = jax.tree_util.tree_flatten_with_path(b)
    if def_a != def_b:
        keys_a = {jax.tree_util.keystr(p) for p, _ in paths_a}
        keys_b = {jax.tree_util.keystr(p) for p, _ in paths_b}
        return (f"structures differ ({len(paths_a)} vs {len(paths_b)} leaves); only in the first: "
                f"{sorted(keys_a - keys_b)[:5]}, only in the second: {sorted(keys_b - keys_a)[:5]}; {def_a} vs {def_b}")
    for (path, x), (_, y) in zip(paths_a, paths_b):
        x, y = _as_numpy(x), _as_numpy(y)
        where = jax.tree_util.keystr(path) or "the root"
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{where}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return f"{where}: values differ"
    return None


def _as_numpy(x):
    import jax

    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def tree_equal(a, b) -> bool:
    """Same structure, then the same leaves bit for bit (see `tree_difference`)."""
    return tree_difference(a, b) is None


def assert_tree_equal(a, b):
    difference = tree_difference(a, b)
    assert difference is None, difference


def as_jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def train_log(workdir, train_only=False):
    """A run's metrics.jsonl records with the timings (images per second) left out; with
    `train_only`, only records holding a train/ metric (a classifier's or a GAN's)."""
    records = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "images_per_second" not in k} for r in records
            if not train_only or any(k.startswith("train/") for k in r)]
