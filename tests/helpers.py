"""Small shared pieces for the tests: a tiny ViT task on synthetic data."""

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


def tree_equal(a, b):
    import jax

    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def as_jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}
