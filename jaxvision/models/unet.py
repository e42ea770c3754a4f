"""U-Net generator (Ronneberger et al., 2015; pix2pix's G, Isola et al., 2017).

flax.linen only: no data, losses or training here.

An encoder of 4x4 stride-2 convolutions halves the image ``depth`` times down to a
bottleneck, a decoder of 4x4 stride-2 transposed convolutions doubles it back, and every
decoder level is concatenated with the encoder features of the same size (the skip
connections carry the detail the bottleneck cannot). pix2pix's layout: encoder C64-C128-
C256-C512-C512..., LeakyReLU 0.2, no norm on the first and innermost layers; decoder ReLU,
norm, dropout 0.5 on the three innermost decoder layers; tanh on the output. At 256 px
``depth`` is 8 (down to 1x1), the paper's net.

Sizing by the image size: ``depth = ceil(log2(image_size))`` (down to 1x1), capped by
``max_depth``. Any input size works: the input is reflect-padded to a multiple of
``2**depth`` and the output cropped back (Fashion-MNIST's 28 px run at 32 with depth 5).

Options for other uses (segmentation baselines): ``out_channels`` and
``output_activation=None`` (raw logits, no tanh). ``upsample``: how the decoder doubles the
size, "transpose" (the paper's, under its original parameter names) or "resize_conv" /
"subpixel" (``models.dcgan.Upsample2x``: no checkerboard pattern, which an adversarial
loss otherwise sharpens into the completed region).

Variables: ``params`` and, with ``norm="batch"``, ``batch_stats``. Train:
``U.apply(vars, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})``
(the dropout rng only when ``dropout > 0``). Eval: ``train=False``, deterministic (no
dropout at test time, unlike the paper, so a completed image is a function of its input).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models.dcgan import UPSAMPLERS, Upsample2x
from jaxvision.models.norms import NORMS, norm_layer

_init = nn.initializers.normal(stddev=0.02)


def depth_for_image_size(image_size: int, max_depth: int = 8) -> int:
    """Stride-2 levels that take `image_size` down to 1 px (rounded up), at most `max_depth`."""
    if image_size < 2:
        raise ValueError(f"U-Net needs images of at least 2 px, got {image_size}")
    return min(max(1, math.ceil(math.log2(image_size))), max_depth)


class UNet(nn.Module):
    """images [B, H, W, C] -> [B, H, W, out_channels] (tanh: in [-1, 1])."""

    image_size: int
    out_channels: int = 1
    width: int = 64
    depth: int | None = None  # None: depth_for_image_size(image_size)
    max_depth: int = 8
    dropout: float = 0.5  # on the three innermost decoder layers; 0 turns it off
    bn_momentum: float = 0.9  # norm="batch": the running averages' momentum (0: the batch's own)
    norm: str = "batch"
    output_activation: str | None = "tanh"
    upsample: str = "transpose"  # or "resize_conv", "subpixel": see the module docstring
    dtype: Any = jnp.float32

    @property
    def num_levels(self) -> int:
        return self.depth if self.depth is not None else depth_for_image_size(self.image_size, self.max_depth)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: choose one of {NORMS}")
        if self.output_activation not in (None, "tanh"):
            raise ValueError(f"output_activation={self.output_activation!r}: use 'tanh' or None")
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample={self.upsample!r}: choose one of {UPSAMPLERS}")
        if x.ndim != 4:
            raise ValueError(f"U-Net expects NHWC images, got shape {x.shape}")
        depth = self.num_levels
        h0, w0 = x.shape[1:3]
        mult = 2 ** depth
        ph, pw = (-h0) % mult, (-w0) % mult
        if ph or pw:
            mode = "reflect" if ph < h0 and pw < w0 else "edge"
            x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
        feats = lambda i: self.width * min(2 ** i, 8)  # noqa: E731
        bias = self.norm != "batch"  # a bias before BatchNorm is cancelled by its mean

        skips, h = [], x.astype(self.dtype)
        for i in range(depth):
            innermost = i == depth - 1
            if i > 0:
                h = nn.leaky_relu(h, 0.2)
            h = nn.Conv(feats(i), (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), kernel_init=_init,
                        use_bias=bias or i == 0 or innermost, dtype=self.dtype, name=f"down{i}")(h)
            if 0 < i and not innermost:
                h = norm_layer(self.norm, train, f"down_norm{i}", self.bn_momentum)(h)
            skips.append(h)

        h = skips.pop()
        for i in reversed(range(depth)):  # level i's decoder maps to the size of encoder level i-1
            outermost = i == 0
            h = nn.relu(h)
            features, use_bias = self.out_channels if outermost else feats(i - 1), bias or outermost
            if self.upsample == "transpose":
                h = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", kernel_init=_init,
                                     use_bias=use_bias, dtype=self.dtype, name=f"up{i}")(h)
            else:
                h = Upsample2x(features, self.upsample, use_bias=use_bias, kernel_init=_init, dtype=self.dtype,
                               name=f"up{i}")(h)
            if outermost:
                break
            h = norm_layer(self.norm, train, f"up_norm{i}", self.bn_momentum)(h)
            if self.dropout and depth - 1 - i < 3:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = jnp.concatenate([h, skips.pop()], axis=-1)

        if self.output_activation == "tanh":
            h = jnp.tanh(h)
        h = h[:, ph // 2: ph // 2 + h0, pw // 2: pw // 2 + w0]
        return h.astype(jnp.float32)
