"""Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs"): a generator and a
discriminator that grow 4 -> 8 -> ... -> `resolution`, as in the official code.

Every block and every RGB head exists from `init` (the parameter tree never changes
shape, so checkpoints and shardings do not either); the resolution *level* (0: 4x4,
k: 4 * 2**k) is a static call argument and `alpha`, the fade-in weight of the newest
block, may be traced. At level k with alpha a:

* G: ``(1 - a) * upsample2x(to_rgb[k-1](h[k-1])) + a * to_rgb[k](h[k])`` (nearest);
* D: ``(1 - a) * from_rgb[k-1](avgpool2x2(x)) + a * block[k](from_rgb[k](x))`` feeds
  block k-1 and on. At a = 0 both equal the level k-1 networks exactly, at a = 1 the
  level-k networks exactly (blends written as (1-a)x + ay, never x + a(y-x)).

Ingredients: equalized learning rate (weights N(0, 1), scaled at run time by
gain / sqrt(fan_in), gain sqrt(2)), pixelwise feature normalisation after every G conv
and on z, leaky ReLU 0.2, minibatch standard deviation (groups of 4) before D's last
block. Each can be switched off for the paper's ablations.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAK = 0.2


def num_levels(resolution: int) -> int:
    """Levels 4, 8, ..., `resolution`; a clear error unless it is a power of two >= 4."""
    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"Progressive GAN resolution must be a power of two >= 4 (4, 8, 16, 32, 64, ...), "
                         f"got {resolution!r}: pad or resize the data to one (Fashion-MNIST: 32).")
    return int(math.log2(resolution)) - 1


def level_size(level: int) -> int:
    return 4 * 2 ** level


def feature_maps(level: int, fmap_base: int, fmap_max: int) -> int:
    """Channels at a level: fmap_base / 2**level, at most fmap_max (the official nf())."""
    return max(1, min(fmap_max, fmap_base >> level))


def pixel_norm(x, eps: float = 1e-8):
    """x / sqrt(mean over channels of x^2 + eps), per pixel."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def minibatch_stddev(x, group_size: int = 4, eps: float = 1e-8):
    """One extra feature map: the standard deviation of each feature over a group of
    examples, averaged over features and pixels. Example n belongs to group member
    n % (N / G) as in the official code (reshape [G, M, ...])."""
    n, h, w, _ = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"Minibatch stddev needs the batch ({n}) to be a multiple of its group size ({g}).")
    y = x.reshape(g, n // g, h, w, -1).astype(jnp.float32)
    y = y - jnp.mean(y, axis=0, keepdims=True)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + eps)  # [M, H, W, C]
    y = jnp.mean(y, axis=(1, 2, 3))  # [M]
    y = jnp.tile(y, g).astype(x.dtype)  # example g * M + m gets y[m]
    return jnp.concatenate([x, jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1))], axis=-1)


def upsample2x(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample2x(x):
    """2x2 box average."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def blend(alpha, low, high):
    """(1 - alpha) * low + alpha * high: exactly `low` at 0 and `high` at 1."""
    return (1.0 - alpha) * low + alpha * high


_NHWC = ("NHWC", "HWIO", "NHWC")


@jax.custom_vjp
def conv2d_same(x, kernel):
    """Stride-1 SAME convolution, NHWC x HWIO (odd kernel), with a hand-written VJP whose
    convolutions are again in that canonical layout, at every order of differentiation.

    Why: JAX's own VJP emits the input gradient with a swapped kernel layout (01oi) and
    the kernel gradient with batch and feature swapped (f01b_i01o); XLA:CPU rewrites such
    convolutions into the canonical layout (transposes around a library call) only in the
    entry computation. Inside a `lax.switch` branch (the ProGAN step picks its level with
    one) they fall back to naive loops: the WGAN-GP double backprop ran ~50x slower. The
    rewrite below is the one XLA makes at top level (same transposes, same convolution),
    so the values are the same bits as JAX's gradient compiled outside a switch."""
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"conv2d_same takes odd kernel sizes (symmetric SAME padding), got {kernel.shape[:2]}.")
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)


def _conv2d_same_fwd(x, kernel):
    return conv2d_same(x, kernel), (x, kernel)


def _conv2d_same_bwd(residuals, dy):
    x, kernel = residuals
    ph, pw = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    # d/dx: the SAME convolution of dy with the flipped kernel, input and output swapped.
    dx = conv2d_same(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    # d/dkernel[i, j, c, o] = sum_{n,h,w} x_pad[n, h+i, w+j, c] dy[n, h, w, o]: a convolution
    # over (h, w) of x as [C, H, W, N] (channels as batch) with dy as an [H, W, N, O] kernel.
    dk = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
                                      ((ph, ph), (pw, pw)), dimension_numbers=_NHWC).transpose(1, 2, 0, 3)
    return dx, dk


conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


class EqualizedDense(nn.Module):
    """Dense layer; with `equalized`, weights N(0, 1) times gain / sqrt(fan_in) at run time
    (the same He-scaled layer whose Adam steps are equal in every layer); without it the
    scale is folded into the initial weights (the plain layer of the ablation)."""

    features: int
    gain: float = math.sqrt(2.0)
    equalized: bool = True

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        scale = self.gain / math.sqrt(fan_in)
        init_std = 1.0 if self.equalized else scale
        kernel = self.param("kernel", lambda k, s: init_std * jax.random.normal(k, s), (fan_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.equalized:
            kernel = kernel * scale
        return x @ kernel + bias


class EqualizedConv(nn.Module):
    """kxk convolution, SAME padding, stride 1, with the equalized learning rate above."""

    features: int
    kernel_size: int = 3
    gain: float = math.sqrt(2.0)
    equalized: bool = True

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        fan_in = k * k * c
        scale = self.gain / math.sqrt(fan_in)
        init_std = 1.0 if self.equalized else scale
        kernel = self.param("kernel", lambda r, s: init_std * jax.random.normal(r, s), (k, k, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.equalized:
            kernel = kernel * scale
        return conv2d_same(x, kernel) + bias


def _act(x):
    return nn.leaky_relu(x, LEAK)


class Generator(nn.Module):
    resolution: int = 32
    channels: int = 1
    latent_dim: int = 128
    fmap_base: int = 512
    fmap_max: int = 128
    pixel_norm: bool = True
    equalized: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        self.levels = num_levels(self.resolution)
        nf = [feature_maps(k, self.fmap_base, self.fmap_max) for k in range(self.levels)]
        eq = self.equalized
        # Level 0: z -> 4x4 (gain sqrt(2)/4 on the dense, as the official code), one 3x3 conv.
        self.dense = EqualizedDense(16 * nf[0], gain=math.sqrt(2.0) / 4, equalized=eq)
        self.convs = [
            [EqualizedConv(nf[k], equalized=eq, name=f"block_{k}_conv{i}") for i in ((0, 1) if k else (1,))]
            for k in range(self.levels)
        ]
        self.to_rgb = [EqualizedConv(self.channels, 1, gain=1.0, equalized=eq, name=f"to_rgb_{k}")
                       for k in range(self.levels)]

    def _norm(self, x):
        return pixel_norm(x) if self.pixel_norm else x

    def __call__(self, z, level: int | None = None, alpha=1.0):
        """Images [B, s, s, C] in [-1, 1]-ish (linear output) at level `level` (default:
        the top), s = 4 * 2**level, the newest block blended in with weight `alpha`."""
        level = self.levels - 1 if level is None else level
        if not 0 <= level < self.levels:
            raise ValueError(f"level must be in [0, {self.levels - 1}] for resolution {self.resolution}, got {level}.")
        # At init every block and RGB head runs, so the parameter tree is complete.
        top = self.levels - 1 if self.is_initializing() else level
        x = self._norm(z.astype(self.dtype))
        x = _act(self.dense(x)).reshape(z.shape[0], 4, 4, -1)
        x = self._norm(x)
        x = self._norm(_act(self.convs[0][0](x)))
        rgb = [self.to_rgb[0](x)] if (self.is_initializing() or level <= 1) else [None]
        for k in range(1, top + 1):
            x = upsample2x(x)
            for conv in self.convs[k]:
                x = self._norm(_act(conv(x)))
            if self.is_initializing() or k >= level - 1:
                rgb.append(self.to_rgb[k](x))
            else:
                rgb.append(None)
        if level == 0:
            return rgb[0]
        return blend(alpha, upsample2x(rgb[level - 1]), rgb[level])


class Discriminator(nn.Module):
    resolution: int = 32
    fmap_base: int = 512
    fmap_max: int = 128
    mbstd_group: int = 4  # 0: no minibatch stddev
    equalized: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        self.levels = num_levels(self.resolution)
        nf = [feature_maps(k, self.fmap_base, self.fmap_max) for k in range(self.levels)]
        eq = self.equalized
        self.from_rgb = [EqualizedConv(nf[k], 1, equalized=eq, name=f"from_rgb_{k}") for k in range(self.levels)]
        # Block k > 0: conv to nf[k], conv to nf[k-1], 2x2 average pool.
        self.convs = [[EqualizedConv(nf[k], equalized=eq, name=f"block_{k}_conv0"),
                       EqualizedConv(nf[k - 1], equalized=eq, name=f"block_{k}_conv1")]
                      for k in range(1, self.levels)]
        self.last_conv = EqualizedConv(nf[0], equalized=eq, name="block_0_conv")
        self.last_dense = EqualizedDense(nf[0], equalized=eq, name="block_0_dense")
        self.out = EqualizedDense(1, gain=1.0, equalized=eq, name="block_0_out")

    def _block(self, k, x):
        for conv in self.convs[k - 1]:
            x = _act(conv(x))
        return downsample2x(x)

    def __call__(self, images, level: int | None = None, alpha=1.0):
        """Logits [B] for images [B, s, s, C] at level `level` (s = 4 * 2**level)."""
        level = self.levels - 1 if level is None else level
        if not 0 <= level < self.levels:
            raise ValueError(f"level must be in [0, {self.levels - 1}] for resolution {self.resolution}, got {level}.")
        if images.shape[1:3] != (level_size(level),) * 2:
            raise ValueError(f"D at level {level} takes {level_size(level)}x{level_size(level)} images, "
                             f"got {images.shape[1:3]}.")
        x_img = images.astype(self.dtype)
        if self.is_initializing() and level != self.levels - 1:
            raise ValueError(f"Initialise D at the top level with {self.resolution}x{self.resolution} images, "
                             "so that every block exists from init.")
        if self.is_initializing():  # create every RGB head (the outputs are not used)
            y = x_img
            for k in range(level, -1, -1):
                self.from_rgb[k](y)
                y = downsample2x(y) if k else y
        x = _act(self.from_rgb[level](x_img))
        if level > 0:
            x = self._block(level, x)
            low = _act(self.from_rgb[level - 1](downsample2x(x_img)))
            x = blend(alpha, low, x)
        for k in range(level - 1, 0, -1):
            x = self._block(k, x)
        if self.mbstd_group:
            x = minibatch_stddev(x, self.mbstd_group)
        x = _act(self.last_conv(x))
        x = _act(self.last_dense(x.reshape(x.shape[0], -1)))
        return self.out(x)[:, 0]
