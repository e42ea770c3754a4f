"""Stem pieces of the ViT for small images, other than the official patch embedding.

`StridedConv3x3` is the conv stem's layer (``ViT(stem="conv")``) written for the CPU;
`shift` gives the translated copies of shifted patch tokenization (``stem="spt"``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["StridedConv3x3", "shift"]


class StridedConv3x3(nn.Module):
    """A 3x3, stride-2, padding-1 convolution computed as nine strided slices and one matmul.

    Same parameters (``kernel`` HWIO (3, 3, C, F), ``bias``) and result as
    ``nn.Conv(F, (3, 3), strides=2, padding=1)``; on CPU, XLA's convolution and its
    gradient (a window-dilated convolution) run several times slower than this gather +
    matmul, which matters for a conv stem on small images.
    """

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        ho, wo = (h + 1) // 2, (w + 1) // 2
        padded = jnp.pad(x, ((0, 0), (1, 2 * ho - h), (1, 2 * wo - w), (0, 0)))
        taps = [padded[:, dy: dy + 2 * ho: 2, dx: dx + 2 * wo: 2] for dy in range(3) for dx in range(3)]
        patches = jnp.concatenate(taps, axis=-1).astype(self.dtype)  # [B, ho, wo, 9C], (dy, dx, c) order
        y = patches @ kernel.reshape(9 * c, self.features).astype(self.dtype)
        return y + bias.astype(self.dtype)


def shift(images, dy: int, dx: int):
    """Translate [B, H, W, C] images by (dy, dx) pixels, filling with zeros (SPT's shifts)."""
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top: top + h, left: left + w]
