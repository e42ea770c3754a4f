"""CycleGAN's ResNet generator (Zhu et al. 2017, after Johnson et al. 2016).

flax.linen module only: no data, losses or training here.

Layers, in the paper's notation (``ck``: k channels; ``dk``: 3x3 stride-2 conv; ``Rk``:
residual block of two 3x3 convs; ``uk``: 3x3 stride-1/2 transposed conv)::

    c7s1-w, d2w, d4w, R4w x num_blocks, u2w, uw, c7s1-out + tanh

every conv but the last followed by instance norm (no affine, as the CycleGAN code) and
ReLU; the 7x7 convs and the residual convs use reflection padding, the stride-2 convs
zero padding. Weights N(0, 0.02), as the CycleGAN code.

The number of residual blocks is sized by the image size (``default_num_blocks``): 9 at
256 px and above, 6 from 128 px (the paper's two settings), and 3 below 128 px (28-64 px:
the feature map after the two downsamplings is only 7-16 px wide, and 3 blocks, each
widening the receptive field by 4 feature-map px, already span it).
The network is fully convolutional: it takes any image whose sides are multiples of 4
(two downsamplings), at least 16 px so that reflection padding fits.

Variables: ``params`` only (instance norm keeps no running statistics), so
``G.apply({"params": p}, x)`` serves training and inference alike.
Images are NHWC in [-1, 1]; parameters are float32, ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_init = nn.initializers.normal(stddev=0.02)
MIN_SIZE = 16


def default_num_blocks(image_size: int) -> int:
    """Residual blocks for square images of `image_size` px: 9 (>= 256), 6 (>= 128), else 3."""
    if image_size >= 256:
        return 9
    if image_size >= 128:
        return 6
    return 3


def reflect_pad(x, pad: int):
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(x):
    # Per example and channel over H, W; no scale/bias and no running stats (CycleGAN code).
    return nn.InstanceNorm(use_scale=False, use_bias=False, epsilon=1e-5)(x)


class ResidualBlock(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda: nn.Conv(self.features, (3, 3), padding="VALID", kernel_init=_init, dtype=self.dtype)  # noqa: E731
        y = nn.relu(instance_norm(conv()(reflect_pad(x, 1))))
        y = instance_norm(conv()(reflect_pad(y, 1)))
        return x + y


class ResnetGenerator(nn.Module):
    """Image -> image of `channels` channels, same size, in [-1, 1] (tanh).

    num_blocks: residual blocks; None: `default_num_blocks(image_size)`.
    """

    channels: int
    image_size: int = 256
    width: int = 64
    num_blocks: int | None = None
    dtype: Any = jnp.float32

    @property
    def blocks(self) -> int:
        return default_num_blocks(self.image_size) if self.num_blocks is None else self.num_blocks

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"ResnetGenerator takes NHWC images [B, H, W, C], got shape {x.shape}")
        h, w = x.shape[1:3]
        if h % 4 or w % 4 or min(h, w) < MIN_SIZE:
            raise ValueError(f"ResnetGenerator needs sides that are multiples of 4 and at least {MIN_SIZE} px "
                             f"(two stride-2 downsamplings, reflection padding); got {h}x{w}: resize or pad it.")
        x = x.astype(self.dtype)
        conv = lambda f, k, s=1, p="VALID": nn.Conv(f, (k, k), strides=(s, s), padding=p,  # noqa: E731
                                                    kernel_init=_init, dtype=self.dtype)
        x = nn.relu(instance_norm(conv(self.width, 7)(reflect_pad(x, 3))))
        for mult in (2, 4):  # d2w, d4w
            x = nn.relu(instance_norm(conv(self.width * mult, 3, 2, ((1, 1), (1, 1)))(x)))
        for _ in range(self.blocks):
            x = ResidualBlock(self.width * 4, dtype=self.dtype)(x)
        for mult in (2, 1):  # u2w, uw
            # PyTorch's ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): exactly 2x.
            x = nn.ConvTranspose(self.width * mult, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                                 kernel_init=_init, dtype=self.dtype)(x)
            x = nn.relu(instance_norm(x))
        x = conv(self.channels, 7)(reflect_pad(x, 3))
        return jnp.tanh(x.astype(jnp.float32))
