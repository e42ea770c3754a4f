"""PatchGAN discriminator (Isola et al., 2017, pix2pix; also CycleGAN's D).

flax.linen only: no data, losses or training here.

D classifies every overlapping patch of its input as real or fake and returns a map of
logits [B, h, w, 1] (the adversarial loss averages over it). The paper's 70x70 D at
256 px is: C64 (4x4, stride 2, no norm) - C128 (s2) - C256 (s2) - C512 (s1) - 1 (s1),
4x4 kernels, padding 1, LeakyReLU 0.2. Its receptive field is 70 px.

Sizing by the image size: the number of stride-2 layers ``n_layers`` is chosen so the
receptive field covers about the same share of the image as 70 px does of 256 px
(n_layers 3 at 256, 2 at 128, 1 at 64 and below; see ``layers_for_image_size``). Each
layer adds (4 - 1) * (product of the strides before it) pixels, so the receptive field is
``receptive_field(n) = 1 + 3 * (2**n - 1) + 3 * 2**n + 3 * 2**n`` = 16, 34, 70, 142 for
n = 1, 2, 3, 4.

Conditional D (pix2pix): ``D(x, condition)`` concatenates the condition (the source
image, for inpainting the masked image and mask) to ``x`` along the channels.
Unconditional D (CycleGAN): ``D(x)``.

Variables: ``params`` and, with ``norm="batch"``, ``batch_stats``. Train:
``D.apply(vars, x, c, train=True, mutable=["batch_stats"])`` returns
``(logits, {"batch_stats": ...})`` (empty for the other norms). Eval: ``train=False``.
Weights are initialised N(0, 0.02), as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.models.norms import NORMS, norm_layer

KERNEL = 4
_init = nn.initializers.normal(stddev=0.02)


def receptive_field(n_layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with `n_layers` stride-2 convolutions."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    strides = [2] * n_layers + [1, 1]  # the n stride-2 convs, then C(width*8) s1 and the output s1
    field, jump = 1, 1
    for s in strides:
        field += (KERNEL - 1) * jump
        jump *= s
    return field


def layers_for_image_size(image_size: int) -> int:
    """n_layers whose receptive field is the closest (in log scale) to 70/256 of the image."""
    if image_size < 16:
        raise ValueError(f"PatchGAN needs images of at least 16 px, got {image_size}")
    target = 70.0 * image_size / 256.0
    candidates = [n for n in range(1, 8) if receptive_field(n) <= 2 * image_size] or [1]
    return min(candidates, key=lambda n: abs(math.log(receptive_field(n) / target)))


class PatchGAN(nn.Module):
    """x [B, H, W, C] (+ condition [B, H, W, C']) -> patch logits [B, h, w, 1].

    ``n_layers=None``: sized by ``image_size`` (``layers_for_image_size``). ``width``: the
    first layer's channels (64 in the paper), doubled per layer up to 8x.
    """

    image_size: int
    width: int = 64
    n_layers: int | None = None
    norm: str = "batch"
    dtype: Any = jnp.float32

    @property
    def num_layers(self) -> int:
        return self.n_layers if self.n_layers is not None else layers_for_image_size(self.image_size)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.num_layers)

    @nn.compact
    def __call__(self, x, condition=None, *, train: bool = False):
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: choose one of {NORMS}")
        if x.ndim != 4:
            raise ValueError(f"PatchGAN expects NHWC images, got shape {x.shape}")
        if condition is not None:
            if condition.shape[:3] != x.shape[:3]:
                raise ValueError(f"condition {condition.shape} and images {x.shape} must share batch, height "
                                 "and width (they are concatenated along the channels)")
            x = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)
        conv = lambda feats, stride, name: nn.Conv(  # noqa: E731
            feats, (KERNEL, KERNEL), strides=(stride, stride), padding=((1, 1), (1, 1)), kernel_init=_init,
            use_bias=name in ("conv0", "logits") or self.norm != "batch", dtype=self.dtype, name=name)
        n = self.num_layers
        h = nn.leaky_relu(conv(self.width, 2, "conv0")(x), 0.2)  # no norm on the first layer
        for i in range(1, n + 1):
            stride = 2 if i < n else 1  # the last hidden conv keeps the resolution (C512 s1 at n=3)
            h = conv(self.width * min(2 ** i, 8), stride, f"conv{i}")(h)
            h = nn.leaky_relu(norm_layer(self.norm, train, f"norm{i}")(h), 0.2)
        return conv(1, 1, "logits")(h).astype(jnp.float32)
