"""DCGAN generator and discriminator (Radford et al., 2015), optionally class-conditional.

flax.linen modules only: no data, losses or training here.

Variable collections (what ``init`` returns and ``apply`` needs):

* ``Generator``: ``params`` and ``batch_stats`` (BatchNorm running averages).
  Train: ``G.apply(vars, z, labels, train=True, mutable=["batch_stats"])``
  returns ``(images, {"batch_stats": ...})``. Eval: ``G.apply(vars, z, labels, train=False)``.
* ``Discriminator``: ``params`` only, plus ``batch_stats`` when ``spectral_norm=True``
  (the power-iteration vectors ``u`` and estimates ``sigma`` of flax's ``SpectralNorm``).
  Train: ``D.apply(vars, x, labels, train=True, mutable=["batch_stats"])``; the
  ``batch_stats`` of the update is empty without spectral norm, so one code path
  serves both. Eval (``train=False``) leaves ``u`` untouched.

``init`` needs only the ``params`` rng (spectral norm draws its initial ``u`` from it).
Images are NHWC in [-1, 1]; parameters are float32, ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

# image size -> side of the first feature map. 28 = 7 * 2**2 (Fashion-MNIST / MNIST);
# 32 and 64 start from 4x4 as in the DCGAN paper.
_BASE_SIZE = {28: 7, 32: 4, 64: 4}
SUPPORTED_IMAGE_SIZES = tuple(sorted(_BASE_SIZE))

# DCGAN initialisation: N(0, 0.02) weights. It was chosen for a generator whose every
# hidden layer is batch-normalised, so activation scale is not an issue there.
_dcgan_init = nn.initializers.normal(stddev=0.02)


def _num_upsamplings(image_size: int) -> int:
    if image_size not in _BASE_SIZE:
        raise ValueError(
            f"image_size={image_size} is not supported; supported sizes: "
            f"{', '.join(map(str, SUPPORTED_IMAGE_SIZES))}"
        )
    return (image_size // _BASE_SIZE[image_size]).bit_length() - 1


UPSAMPLERS = ("transpose", "resize_conv", "subpixel")


def depth_to_space(x, block: int = 2):
    """[B, H, W, block*block*C] -> [B, H*block, W*block, C]; channel (dy*block + dx)*C + c
    becomes pixel (block*y + dy, block*x + dx), channel c (TensorFlow's order)."""
    b, h, w, c = x.shape
    c //= block * block
    x = x.reshape(b, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, c)


def icnr(base_init, block: int = 2):
    """ICNR initialisation (Aitken et al. 2017) of a sub-pixel conv: the block*block
    outputs of each input pixel start equal, so at init the layer is a nearest-neighbour
    upsampling followed by a convolution, free of checkerboard patterns."""
    def init(key, shape, dtype=jnp.float32):
        *k, c_in, c_out = shape
        base = base_init(key, (*k, c_in, c_out // (block * block)), dtype)
        return jnp.tile(base, (1,) * len(k) + (1, block * block))
    return init


class Upsample2x(nn.Module):
    """Doubles the spatial size and maps to `features` channels, as `method` says:

    * "transpose": ConvTranspose 4x4 stride 2 (the DCGAN paper's layer);
    * "resize_conv": nearest-neighbour 2x resize, then Conv 3x3 (Odena et al. 2016,
      "Deconvolution and Checkerboard Artifacts": every output pixel sees the same
      number of inputs, so no checkerboard);
    * "subpixel": Conv 3x3 to 4x the channels at the low resolution, then depth-to-space
      (Shi et al. 2016), ICNR-initialised; the cheapest of the three.
    """

    features: int
    method: str = "transpose"
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, name="conv")
        if self.method == "transpose":
            return nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), padding="SAME",
                                    kernel_init=self.kernel_init, **kw)(x)
        if self.method == "resize_conv":
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
            return nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=self.kernel_init, **kw)(x)
        if self.method == "subpixel":
            x = nn.Conv(4 * self.features, (3, 3), padding="SAME", kernel_init=icnr(self.kernel_init), **kw)(x)
            return depth_to_space(x, 2)
        raise ValueError(f"upsample must be one of {UPSAMPLERS}, got {self.method!r}")


def _check_labels(labels, num_classes: int | None, batch: int, who: str):
    """Shared label validation: the errors name the fix, not just the symptom."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(
                f"this {who} is unconditional (num_classes=None) but labels were "
                f"passed; build it with num_classes=... or drop labels"
            )
        return None
    if labels is None:
        raise ValueError(f"this {who} is class-conditional: pass labels=... (int array [B])")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {labels.shape}")
    return labels


class Generator(nn.Module):
    """DCGAN generator: z [B, latent_dim] (+ labels [B]) -> images [B, H, W, channels].

    Layout: Dense(z) -> reshape to base x base x (width * 2**(n-1)) -> BN -> ReLU, then
    n-1 blocks of ConvTranspose(4x4, stride 2) + BN + ReLU halving the channels, and a
    last ConvTranspose(4x4, stride 2) to ``channels`` with tanh (no BN on the output,
    as in the paper). n = 2 for 28 px (7->14->28), 3 for 32 px, 4 for 64 px; with
    width=64 the 64 px net is exactly the paper's 4x4x512 -> 8x8x256 -> ... -> 64x64x3.
    A 4x4 kernel with stride 2 (kernel divisible by stride) avoids the uneven overlap
    that makes checkerboard artefacts. ``output_conv=True``: n such blocks, the last one
    reaching full resolution with width / 2 channels, then a 3x3 conv to ``channels`` with
    tanh (SN-GAN's standard CNN generator).

    Conditional (num_classes set): a learned embedding of the label, of size latent_dim,
    is concatenated to z. A learned embedding rather than a one-hot keeps the label
    signal on the same scale as the N(0, 1) noise at initialisation.
    """

    image_size: int = 28
    channels: int = 1
    latent_dim: int = 100
    width: int = 64
    num_classes: int | None = None
    dtype: Any = jnp.float32
    # Under pmap, the mapped axis name: BatchNorm then averages its batch statistics over
    # all devices, so per-device batches train like one global batch (as under jit).
    axis_name: str | None = None
    # Weight of the old running average in each BatchNorm update (PyTorch momentum 0.1 ==
    # flax momentum 0.9). 0 makes the running statistics exactly those of the last batch:
    # how the statistics of EMA weights are recomputed (jaxvision.tasks.gan).
    bn_momentum: float = 0.9
    # How each layer doubles the resolution: "transpose" (the paper's), "resize_conv" or
    # "subpixel" (see `Upsample2x`).
    upsample: str = "transpose"
    # SN-GAN's "standard CNN" ending (Miyato et al. 2018, appendix): the last 2x layer keeps
    # channels (halved once more, + BN + ReLU) and a 3x3 convolution at full resolution makes
    # the image, so every output pixel is computed from a neighbourhood at its own resolution
    # instead of the last upsampling writing it straight from the half-resolution features.
    output_conv: bool = False

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool):
        n = _num_upsamplings(self.image_size)
        base = _BASE_SIZE[self.image_size]
        z = jnp.asarray(z)
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {z.shape}")
        labels = _check_labels(labels, self.num_classes, z.shape[0], "generator")
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample must be one of {UPSAMPLERS}, got {self.upsample!r}")

        x = z.astype(self.dtype)
        if labels is not None:
            emb = nn.Embed(self.num_classes, self.latent_dim, dtype=self.dtype,
                           name="label_embed")(labels)
            x = jnp.concatenate([x, emb], axis=-1)

        # eps 1e-5 as in the paper's code.
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                       epsilon=1e-5, dtype=self.dtype, name=name,
                                       axis_name=self.axis_name if train else None)
        ch = self.width * 2 ** (n - 1)
        # No bias before BatchNorm: BN's own offset makes it redundant.
        x = nn.Dense(base * base * ch, use_bias=False, kernel_init=_dcgan_init,
                     dtype=self.dtype, name="project")(x)
        x = x.reshape(x.shape[0], base, base, ch)
        x = nn.relu(bn("project_bn")(x))
        for i in range(n if self.output_conv else n - 1):
            ch //= 2
            x = self._up(ch, False, f"up{i}")(x)
            x = nn.relu(bn(f"up{i}_bn")(x))
        if self.output_conv:
            x = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=_dcgan_init, dtype=self.dtype,
                        name="to_image")(x)
        else:
            x = self._up(self.channels, True, "to_image")(x)
        return jnp.tanh(x)

    def _up(self, features: int, use_bias: bool, name: str):
        if self.upsample == "transpose":  # the paper's layer, under its original parameter names
            return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias,
                                    kernel_init=_dcgan_init, dtype=self.dtype, name=name)
        return Upsample2x(features, self.upsample, use_bias=use_bias, kernel_init=_dcgan_init,
                          dtype=self.dtype, name=name)


class Discriminator(nn.Module):
    """DCGAN discriminator: images [B, H, W, channels] (+ labels [B]) -> logits [B] (float32).

    Layout: n strided Conv(4x4, stride 2) + LeakyReLU(0.2) with channels width, 2*width,
    ... (n as in the generator: 28 px -> 14 -> 7; 32 -> 4; 64 -> 4), flatten, Dense(1).

    Normalisation: none (a deliberate departure from the paper, which batch-normalises the
    inner layers). BatchNorm would make each example's logit depend on the rest of its
    batch: real and fake batches get different statistics, results change with the
    per-device batch under data parallelism, and gradient penalties (WGAN-GP, R1), which
    need per-example gradients, become wrong. Without BN the default LeCun-normal init is
    used (not DCGAN's N(0, 0.02), which shrinks activations layer after layer when nothing
    renormalises them). ``spectral_norm=True`` wraps every conv, the Dense and the label
    embedding in ``flax.linen.SpectralNorm`` (Miyato et al. 2018) for a 1-Lipschitz-ish D.

    Conditional: projection discriminator (Miyato & Koyama 2018),
    ``logit = Dense(h) + sum(embed(y) * h)`` with h the flattened features.
    """

    image_size: int = 28
    channels: int = 1
    width: int = 64
    num_classes: int | None = None
    spectral_norm: bool = False
    dtype: Any = jnp.float32

    def _layer(self, layer, *args, train: bool):
        # Power iteration state lives in 'batch_stats'; only advance it while training so
        # evaluation is deterministic and needs no mutable collections.
        if self.spectral_norm:
            return nn.SpectralNorm(layer, name=f"{layer.name}_sn")(*args, update_stats=train)
        return layer(*args)

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool):
        n = _num_upsamplings(self.image_size)
        x = jnp.asarray(x)
        expected = (self.image_size, self.image_size, self.channels)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(
                f"expected images of shape [B, {', '.join(map(str, expected))}] (NHWC), "
                f"got {x.shape}"
            )
        labels = _check_labels(labels, self.num_classes, x.shape[0], "discriminator")

        h = x.astype(self.dtype)
        for i in range(n):
            conv = nn.Conv(self.width * 2 ** i, (4, 4), strides=(2, 2), padding="SAME",
                           dtype=self.dtype, name=f"conv{i}")
            h = nn.leaky_relu(self._layer(conv, h, train=train), negative_slope=0.2)
        h = h.reshape(h.shape[0], -1)
        logits = self._layer(nn.Dense(1, dtype=self.dtype, name="logit"), h, train=train)[:, 0]
        if labels is not None:
            # std 1/sqrt(d) puts the projection term on the scale of the Dense logit
            # at init (a unit-variance table would give logits of size ~sqrt(d)).
            embed = nn.Embed(self.num_classes, h.shape[-1], dtype=self.dtype,
                             embedding_init=nn.initializers.normal(h.shape[-1] ** -0.5),
                             name="label_embed")
            logits = logits + jnp.sum(self._layer(embed, labels, train=train) * h, axis=-1)
        # Logits in float32 whatever the compute dtype: the losses take softplus of them.
        return logits.astype(jnp.float32)
