"""Fine-tune a pretrained ViT on any tfds image-classification dataset.

The standard recipe of vision_transformer / big_vision (SGD momentum 0.9, no weight
decay, clip 1.0, global batch 512, 500 warmup steps then cosine, new zero-initialised
head, position embeddings resampled to the new resolution) with the checkpoint's own
architecture:

    # an official AugReg ViT-B/16 (ImageNet-21k) on CIFAR-10 at 384 px (needs the internet
    # for tfds's cifar10 and a GPU; the checkpoint from gs://vit_models/augreg/):
    python experiments/vit_finetune.py --workdir runs/b16_cifar10 \
        --init B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz

    # timm weights (exact GELU is set from the format), another dataset and size:
    python experiments/vit_finetune.py --workdir runs/s16_pets --init vit_small.safetensors \
        --config.data.dataset=oxford_iiit_pet --config.data.image_size=224 \
        --config.data.eval_split=test

    # a linear probe (only the head trains), or a jaxvision run as the checkpoint:
    python experiments/vit_finetune.py --workdir runs/probe --init runs/pretrain --preset linear_probe

Presets: default (the recipe above, cifar10 at 384 px, 10k steps), linear_probe (frozen
backbone, head only, lr 0.1). Override anything: --config.optim.learning_rate=0.01,
--config.transfer.layer_decay=0.75, --config.transfer.fewshot="(1,5,10,25)",
--config.global_batch_size=128 --config.micro_batches=4 (gradient accumulation).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxvision import cli  # noqa: E402
from jaxvision.tasks import finetune  # noqa: E402

PRESETS = ("default", "linear_probe")


def get_config(preset: str = "default") -> finetune.FinetuneConfig:
    config = finetune.standard_recipe("cifar10", image_size=384, total_steps=10_000, learning_rate=0.03)
    if preset == "linear_probe":
        config = dataclasses.replace(
            config,
            optim=dataclasses.replace(config.optim, learning_rate=0.1, warmup_steps=100),
            total_steps=2_000,
            transfer=dataclasses.replace(config.transfer, freeze="linear_probe"),
        )
    return config


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--init", default=None,
                     help="checkpoint: .npz (official/big_vision), .safetensors/.pth (timm) or a jaxvision run folder")
    known, rest = pre.parse_known_args(argv)
    if known.init is not None:
        rest.append(f"--config.transfer.init={known.init}")
    config, args = cli.parse(rest, get_config, PRESETS, description=__doc__)
    results = finetune.run(config, args.workdir)
    keys = ("test_accuracy", "steps", "wall_seconds", "train_images_per_second")
    print({k: v for k, v in results.items() if k in keys or k.startswith("fewshot_")})
    return results


if __name__ == "__main__":
    main()
