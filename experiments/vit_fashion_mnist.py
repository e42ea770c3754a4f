"""ViT on Fashion-MNIST, trained from scratch: the main job.

Command (after the README's set-up):
    .venv/bin/python experiments/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist
    .venv/bin/python experiments/vit_fashion_mnist.py --workdir runs/vit_fmnist_long --preset long

Hardware and result (measured on the 2-core CPU VM, see README; issue 2's targets are 91%
within 15 minutes and 93% for the long preset):
    default: test accuracy 91.21% (top-5 99.85%) in 14.1 minutes (844.0 s; 14 min 18 s for
             the whole scripts/main.sh command), 12,000 steps at 1,916 img/s.
    long:    test accuracy 93.24% (top-5 99.92%), 36,000 steps, in 63.8 minutes
             (3828.1 s; 64 min 2 s for the whole command) at 1,228 img/s.

Override any field: --config.total_steps=200 --config.model.width=128
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxvision import cli  # noqa: E402
from jaxvision.tasks import classification as cls  # noqa: E402

PRESETS = ("default", "long")


def get_config(preset: str = "default") -> cls.ClassificationConfig:
    # Chosen for a fixed CPU time, not a fixed epoch count (experiments/sweeps/README.md):
    # a small ViT with 4x4 patches (49 tokens; on 28x28 images the token count buys
    # accuracy), narrow and shallow so that the 2-core CPU sees the most images in the
    # time, global average pooling, and the two small-dataset changes of Lee et al. 2021,
    # shifted patch tokenization and locality self-attention, which add about a point at
    # no cost in speed. Patch dropout 0.5 (Liu et al. 2022): each training image shows the
    # encoder a random 24 of its 49 tokens, so a step costs about half and twice the epochs
    # fit in the time (25.6 instead of 12.8); without it the model overfits by the end
    # (train 94.6% vs test 90.2%), with it train and test accuracy end level.
    # micro_batches=8 is the CPU fast path (same gradient, pieces that stay in cache).
    # Flips only: pad-and-crop cost accuracy at 13 epochs.
    config = cls.ClassificationConfig(
        model=cls.ModelConfig(variant="Ti/4", width=64, depth=4, mlp_dim=128, num_heads=4, pool="gap",
                              stem="spt", locality_attention=True, patch_dropout=0.5),
        data=cls.DataConfig(dataset="fashion_mnist", augment="flip"),
        optim=cls.OptimConfig(name="adamw", learning_rate=2e-3, warmup_steps=200, weight_decay=0.05,
                              grad_clip_norm=1.0, label_smoothing=0.1),
        seed=0,
        global_batch_size=128,
        micro_batches=8,
        total_steps=12_000,
        log_every=50,
        eval_every=2000,
        checkpoint_every=2000,
    )
    if preset == "long":
        # 77 epochs: a convolutional stem (the most accuracy per epoch in the search) with
        # locality attention and patch dropout 0.5, and pad-and-crop, which pays over 40+
        # epochs. Without patch dropout the same recipe stopped at 92.91% (train 95.0%: it
        # overfit); with it, 93.24% (train 92.4%), at about 0.6x the time per step (10-11
        # instead of 6-7 steps/s).
        config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, stem="conv"),
            data=dataclasses.replace(config.data, augment="pad_crop_flip"),
            total_steps=36_000,
            eval_every=4000,
            checkpoint_every=2000,
        )
    return config


def write_attention_figure(config, workdir, num_images: int = 8):
    """plots/attention_rollout.png: the first test images under the trained model's
    attention rollout and per-layer maps (jaxvision.explain). Reads the finished run only,
    so no metric or result changes; written once (a rerun of a finished run keeps it)."""
    import jax

    from jaxvision.apps import attention
    from jaxvision.data.evaluation import image_batches

    path = os.path.join(workdir, "plots", "attention_rollout.png")
    if os.path.exists(path) or jax.process_index() != 0:
        return
    _, batches = image_batches(config.data.dataset, config.data.eval_split, num_images=num_images,
                               data_dir=config.data.data_dir)
    attention.write_rollout_figure(workdir, next(iter(batches)) / 127.5 - 1.0, path)


def main(argv=None):
    config, args = cli.parse(argv, get_config, PRESETS, description=__doc__)
    results = cls.run(config, args.workdir)
    write_attention_figure(config, args.workdir)
    print({k: results[k] for k in ("test_accuracy", "steps", "wall_seconds", "train_images_per_second") if k in results})
    return results


if __name__ == "__main__":
    main()
