"""The ResNet stem of the hybrid ResNet + ViT (Dosovitskiy et al. 2020, section 3.1).

A ResNet-v2-style network in the official google-research/vision_transformer form:
weight-standardised convolutions without bias (`StdConv`), GroupNorm with 32 groups,
a root 7x7 stride-2 conv of ``width`` channels + 3x3 stride-2 max pool, then bottleneck
stages; stage ``i`` has ``width * 2**i`` bottleneck channels (x4 out) and strides 2 in
its first unit (stage 0: stride 1). "R50" = stages (3, 4, 9): the ResNet-50 units of
stages 1-3 with stage 3 lengthened to 9, total stride 16 (the hybrid ViT then uses
patch size 1 on that feature map). The last GroupNorm of each unit starts at zero scale,
so every unit starts as the identity on its residual path.

Parameter names are the official ``R50+ViT-B_16.npz`` ones (no module of their own:
`resnet_stem` is called inside the ViT's compact method, so its layers sit at the top
level of the ViT's parameters)::

    conv_root/kernel (7, 7, C, width)        gn_root/{scale, bias}
    block{s}/unit{u}/conv{1,2,3}/kernel      block{s}/unit{u}/gn{1,2,3}/{scale, bias}
    block{s}/unit1/conv_proj/kernel          block{s}/unit1/gn_proj/{scale, bias}

Two conventions of the same architecture differ in their normalisation arithmetic:
``"official"`` (vision_transformer, flax): w' = (w - mean) / (std + eps) with eps 1e-5,
GroupNorm eps 1e-6 (flax's default); ``"timm"`` (timm's ``StdConv2dSame`` and
``GroupNormAct``): w' = (w - mean) / sqrt(var + eps) with eps 1e-8, GroupNorm eps 1e-5
(PyTorch's default). Weights trained in one convention give slightly different outputs
in the other, so a model takes the convention of its weights (``std_conv_eps`` and
``resnet_convention`` of `jaxvision.models.vit.ViT`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["CONVENTIONS", "GROUPS", "StdConv", "ResidualUnit", "ResNetStage", "resnet_stem", "resnet_stride", "stage_channels"]

CONVENTIONS = ("official", "timm")
GROUPS = 32  # GroupNorm groups, as in BiT and the official hybrid
_GROUP_NORM_EPS = {"official": 1e-6, "timm": 1e-5}


def resnet_stride(stages: Sequence[int]) -> int:
    """Total stride of the stem: 4 (root conv + pool), x2 for every stage after the first."""
    return 4 * 2 ** (len(stages) - 1) if stages else 4


def stage_channels(width: int, stages: Sequence[int]) -> int:
    """Channels of the stem's output feature map."""
    return 4 * width * 2 ** (len(stages) - 1) if stages else width


def standardize(kernel, eps: float, convention: str):
    """Weight standardisation of an HWIO kernel over (H, W, I), per output filter."""
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    centred = kernel - mean
    var = jnp.mean(jnp.square(centred), axis=(0, 1, 2), keepdims=True)  # biased, as both references
    if convention == "timm":
        return centred * jax.lax.rsqrt(var + eps)
    return centred / (jnp.sqrt(var) + eps)


class StdConv(nn.Module):
    """Bias-free convolution with a weight-standardised kernel, TF "SAME" padding."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    eps: float = 1e-5
    convention: str = "official"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        # Standardise in float32 whatever the compute dtype: the mean/variance of a
        # filter are what keep the scale of the output fixed.
        kernel = standardize(kernel.astype(jnp.float32), self.eps, self.convention).astype(self.dtype)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel, self.strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ResidualUnit(nn.Module):
    """Bottleneck unit (post-activation, as the official hybrid): 1x1 -> 3x3 (strided)
    -> 1x1 x4 channels, GroupNorm after each, ReLU after the first two and after the sum;
    a 1x1 projection + GroupNorm on the shortcut when shape or stride change."""

    features: int
    strides: tuple[int, int] = (1, 1)
    eps: float = 1e-5
    convention: str = "official"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k, s, name: StdConv(f, k, s, eps=self.eps, convention=self.convention,  # noqa: E731
                                            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        norm = lambda name, **kw: nn.GroupNorm(GROUPS, epsilon=_GROUP_NORM_EPS[self.convention],  # noqa: E731
                                               dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw)
        out = 4 * self.features
        residual = x
        if x.shape[-1] != out or tuple(self.strides) != (1, 1):
            residual = norm("gn_proj")(conv(out, (1, 1), self.strides, "conv_proj")(x))
        y = nn.relu(norm("gn1")(conv(self.features, (1, 1), (1, 1), "conv1")(x)))
        y = nn.relu(norm("gn2")(conv(self.features, (3, 3), self.strides, "conv2")(y)))
        # Zero scale: the unit starts as the identity on the residual path.
        y = norm("gn3", scale_init=nn.initializers.zeros)(conv(out, (1, 1), (1, 1), "conv3")(y))
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """`units` bottleneck units; the first one strides."""

    units: int
    features: int
    first_stride: tuple[int, int]
    eps: float = 1e-5
    convention: str = "official"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(eps=self.eps, convention=self.convention, dtype=self.dtype, param_dtype=self.param_dtype)
        for u in range(self.units):
            x = ResidualUnit(self.features, self.first_stride if u == 0 else (1, 1), name=f"unit{u + 1}", **kw)(x)
        return x


def resnet_stem(x, *, stages: Sequence[int], width: int = 64, eps: float = 1e-5, convention: str = "official",
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    """images [B, H, W, C] -> features [B, H/s, W/s, stage_channels(width, stages)], s =
    `resnet_stride(stages)`.

    Call it inside a parent module's ``@nn.compact`` method: the layers become the
    parent's submodules under the official names (``conv_root``, ``gn_root``,
    ``block{s}/unit{u}``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"resnet_convention must be one of {CONVENTIONS}, got {convention!r}")
    if any(int(n) < 1 for n in stages):
        raise ValueError(f"every ResNet stage needs at least one unit, got stages {tuple(stages)}")
    if width % GROUPS:
        raise ValueError(f"resnet_width {width} is not divisible by the {GROUPS} GroupNorm groups: "
                         f"choose a multiple of {GROUPS} (official: 64)")
    kw = dict(eps=eps, convention=convention, dtype=dtype, param_dtype=param_dtype)
    x = StdConv(width, (7, 7), (2, 2), name="conv_root", **kw)(x)
    x = nn.GroupNorm(GROUPS, epsilon=_GROUP_NORM_EPS[convention], dtype=dtype, param_dtype=param_dtype,
                     name="gn_root")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding="SAME")
    for s, units in enumerate(stages):
        x = ResNetStage(int(units), width * 2**s, (2, 2) if s else (1, 1), name=f"block{s + 1}", **kw)(x)
    return x
