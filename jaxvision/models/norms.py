"""The normalisation choices of the image-to-image networks (U-Net, PatchGAN)."""

from __future__ import annotations

import flax.linen as nn

NORMS = ("batch", "instance", "none")


def norm_layer(kind: str, train: bool, name: str, momentum: float = 0.9):
    """"batch": BatchNorm (momentum 0.9 = PyTorch's 0.1, eps 1e-5 as BatchNorm2d; momentum 0
    stores the batch's own statistics, which is how they are recomputed for other weights);
    "instance": InstanceNorm without affine parameters (pix2pix/CycleGAN's default);
    anything else: the identity."""
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, name=name)
    if kind == "instance":
        return nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False, name=name)
    return lambda x: x
