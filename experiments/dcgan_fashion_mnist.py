"""DCGAN on Fashion-MNIST with the non-saturating loss, EMA generator and FD-ViT.

Command (after the README's set-up; the FD-ViT classifier is the main job's run, trained
first if runs/vit_fashion_mnist holds none):
    .venv/bin/python experiments/dcgan_fashion_mnist.py --workdir runs/dcgan_fashion_mnist
    .venv/bin/python experiments/dcgan_fashion_mnist.py --workdir runs/cdcgan --preset conditional
    .venv/bin/python experiments/dcgan_fashion_mnist.py --workdir runs/wgan_gp --preset wgan_gp
    .venv/bin/python experiments/dcgan_fashion_mnist.py --workdir runs/dcgan_long --preset long

Hardware and expected result (measured, see README; 2-core Intel Xeon VM, the two
3000-step runs side by side; classifier: the main job's recipe stopped at 3,000 steps; FID off):
    default (sub-pixel G, 9000 steps), alone: 282 s of training (2,172 img/s), FD-ViT of
        10k EMA samples 2.52 (real floor 0.03), precision 0.712, recall 0.827, density
        0.602, coverage 0.575, every class between 7.3% and 12.0% of samples;
    sub-pixel G, 3000 steps: 194 s of training, FD-ViT of 10k EMA samples 6.04
        (real floor 0.03), precision 0.678, recall 0.736, density 0.525, coverage 0.376,
        smallest class 4.9% of samples, largest 14.2%;
    the paper's transposed convolutions, 3000 steps (--config.model.upsample=transpose
        --config.total_steps=3000: the default before): 288 s, FD-ViT 9.82, precision 0.660, recall 0.791, density
        0.469, coverage 0.304, smallest class 1.6%.
FID of 10k EMA samples is computed at the end when FID-Inception weights are installed
(the set-up installs them): 49.5 min on this CPU the first time, an estimated 25 min once the
reference statistics are cached (README). The default run's FID, measured afterwards with
`python -m jaxvision.fid_cli checkpoint:RUN tfds:fashion_mnist:train --num-images 10000`:
49.8 (KID 0.038); the issue's target (< 26.5) is not met.

Longer runs (2-core AMD EPYC VM; classifier: the main job's full run, 91.21%; FID of 10k EMA
samples at the end of the run):
    default, --config.total_steps=21000: 989 s of training (over the 15 minutes here), FID 32.0,
        FD-ViT 2.63, precision 0.770, recall 0.812, classes 8.0-11.2%;
    default, --config.total_steps=18000 --config.optim.lr_decay_steps=6000: 778 s, FID 38.4,
        FD-ViT 2.94;
    --preset conditional (18,000 steps, decay over the last 6,000; an FID evaluation shared
        the CPU): 1,363 s, FID 30.7, FD-ViT 0.29 (floor 0.025), precision 0.840, recall 0.571,
        conditional accuracy 91.25% (the issue asks >= 90%).
    --preset long (width 64, 55,000 steps; the test suite shared the CPU for its first ~35 min):
        7,721 s of training, FID 16.8 (the issue asks < 15), FD-ViT 1.45,
        precision 0.784, recall 0.849, classes 7.9-11.9%; FID's own time 29 min.

Override any field: --config.total_steps=500 --config.optim.loss=hinge
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxvision import cli  # noqa: E402
from jaxvision.tasks import gan  # noqa: E402

import vit_fashion_mnist  # noqa: E402  (the FD-ViT classifier's recipe)

PRESETS = ("default", "conditional", "wgan_gp", "long")


def get_config(preset: str = "default") -> gan.GANConfig:
    config = gan.GANConfig(
        # Width 32 (half the paper's 64): on a 2-core CPU it trains ~3x faster and still
        # draws recognisable garments at 28x28.
        # Sub-pixel upsampling in G: no checkerboards, and on the CPU a 1.5x faster step and a
        # lower FD-ViT than the paper's transposed convolutions at 3000 steps (README).
        model=gan.GANModelConfig(latent_dim=100, g_width=32, d_width=32, upsample="subpixel"),
        optim=gan.GANOptimConfig(loss="non_saturating", g_learning_rate=2e-4, d_learning_rate=2e-4, b1=0.5,
                                 ema_decay=0.999),
        fd=gan.FDConfig(classifier_workdir="runs/vit_fashion_mnist", num_samples=10_000),
        global_batch_size=64,
        # 9000 steps of the sub-pixel G take about 5 minutes here, well inside the 15-minute
        # budget (3000 was the transposed-convolution G's budget).
        total_steps=9000,
        sample_every=1000,
        checkpoint_every=1000,
    )
    if preset == "conditional":
        # 18,000 steps, the last 6,000 with the learning rates decaying to 0: 91.25% of samples
        # get their class from the main job's classifier (9,000 constant steps: 87.0% under a
        # weaker judge). About 16 minutes of training alone on the 2-core AMD EPYC (1,214 img/s
        # over 1,500 steps).
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, conditional=True),
                                     optim=dataclasses.replace(config.optim, lr_decay_steps=6000),
                                     total_steps=18_000)
    if preset == "wgan_gp":
        config = dataclasses.replace(
            config,
            optim=dataclasses.replace(config.optim, loss="wgan", gp_weight=10.0, n_critic=5, b1=0.0, b2=0.9,
                                      g_learning_rate=1e-4, d_learning_rate=1e-4),
            total_steps=3000,  # 5 critic steps per G step: 3000 keep it inside the budget
        )
    if preset == "long":
        # The 2-hour budget: the paper's width 64 (G 7x7x128 -> 14x14x64 -> 28x28; about
        # 3x the FLOPs of width 32) for 55,000 steps. 558 img/s measured on the 2-core AMD EPYC
        # (1,500-step probe), i.e. about 105 minutes of steps; FD-ViT every 10,000 steps
        # to follow the run.
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, g_width=64, d_width=64),
                                     fd=dataclasses.replace(config.fd, every=10_000),
                                     total_steps=55_000, sample_every=5000)
    return config


def main(argv=None):
    config, args = cli.parse(argv, get_config, PRESETS, description=__doc__)
    results = gan.run(config, args.workdir, classifier_config=vit_fashion_mnist.get_config())
    print({k: v for k, v in results.items() if k.startswith(("fd_vit", "steps", "wall"))})
    return results


if __name__ == "__main__":
    main()
