"""Vision Transformer (Dosovitskiy et al. 2020) in flax.linen.

Parameter names mirror the official google-research/vision_transformer checkpoints, so an
official ``.npz`` maps onto ``params`` 1:1 (flat keys joined with ``/``)::

    embedding/{kernel (ph, pw, C, D) HWIO, bias}
    cls (1, 1, D)                                       only with pool="cls"
    Transformer/posembed_input/pos_embedding (1, N(+1), D)
    Transformer/encoderblock_{i}/LayerNorm_0
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}
        kernel (D, heads, head_dim), bias (heads, head_dim)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out
        kernel (heads, head_dim, D), bias (D,)
    Transformer/encoderblock_{i}/LayerNorm_2
    Transformer/encoderblock_{i}/MlpBlock_3/{Dense_0, Dense_1}
    Transformer/encoder_norm
    pre_logits                                          only with representation_size
    head                                                only with num_classes > 0
    conv_root, gn_root, block{s}/unit{u}/...            only for a hybrid (jaxvision.models.resnet)

Hybrids ("R50+B/16"): the ResNet stem of `jaxvision.models.resnet` first, then the same
``embedding`` conv with patch size (stride / the stem's stride) on its feature map: for
"R50+B/16" a 1x1 conv on the stride-16 map of 1024 channels.

Inputs are NHWC float images scaled to [-1, 1] (the official and big_vision convention;
pretrained checkpoints expect it). Any channel count works (1 for Fashion-MNIST).

The encoder (attention, MLP, blocks, position embeddings) is `jaxvision.models.transformer`,
the small-image stems' layers `jaxvision.models.stems`, and what parameter names mean
(layers, per-block <-> stacked layouts) `jaxvision.models.vit_layout`. This module knows
nothing of data, training or checkpoints.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.resnet import CONVENTIONS, resnet_stem, resnet_stride
from jaxvision.models.stems import StridedConv3x3, shift
from jaxvision.models.transformer import Transformer

__all__ = ["HYBRID_STAGES", "VARIANTS", "ViT", "parse_variant"]

# (width, depth, mlp_dim, num_heads) of the standard sizes (ViT paper, DeiT for Ti).
VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}

STEMS = ("patch", "conv", "spt")

# ResNet stems of the hybrids by depth (3 layers per bottleneck unit + root conv + head):
# the official R50+ViT-B/16 (stages 1-3 of ResNet-50, the third lengthened to 9 units)
# and the AugReg R26+ViT-S/32 (four stages of 2).
HYBRID_STAGES: dict[str, tuple[int, ...]] = {"R26": (2, 2, 2, 2), "R50": (3, 4, 9)}
_HYBRID_RE = re.compile(r"^(?P<resnet>R\d+)\+(?P<vit>.+)$")

_VARIANT_RE = re.compile(r"^(?P<name>[A-Za-z]+)/(?P<ph>\d+)(?:x(?P<pw>\d+))?$")


def parse_variant(variant: str) -> dict[str, Any]:
    """``"B/16"`` -> ``dict(width, depth, mlp_dim, num_heads, patch_size=(16, 16))``.

    Any patch size is accepted ("Ti/4", "S/7"); "B/16x8" gives non-square 16x8 patches
    (height x width). Hybrids: ``"R50+B/16"`` -> also ``resnet_stages=(3, 4, 9)``, and the
    number after the slash is the total stride, so the patch size on the ResNet's feature
    map is that stride over the ResNet's (16 / 16 = 1 for R50+B/16).
    """
    hybrid = _HYBRID_RE.match(variant.strip()) if isinstance(variant, str) else None
    if hybrid is not None:
        if hybrid["resnet"] not in HYBRID_STAGES:
            raise ValueError(f"unknown hybrid ResNet {hybrid['resnet']!r} in {variant!r}: choose one of "
                             f"{list(HYBRID_STAGES)} (e.g. 'R50+B/16'), or give resnet_stages=(...) explicitly")
        stages = HYBRID_STAGES[hybrid["resnet"]]
        config = parse_variant(hybrid["vit"])
        stride = resnet_stride(stages)
        (sh, sw) = config["patch_size"]
        if sh % stride or sw % stride:
            raise ValueError(f"hybrid {variant!r}: the stride {sh}x{sw} is not a multiple of the "
                             f"{hybrid['resnet']} stem's stride {stride}; use e.g. "
                             f"'{hybrid['resnet']}+{hybrid['vit'].split('/')[0]}/{stride}'")
        return dict(config, patch_size=(sh // stride, sw // stride), resnet_stages=stages)
    match = _VARIANT_RE.match(variant.strip()) if isinstance(variant, str) else None
    if match is None or match["name"] not in VARIANTS:
        raise ValueError(
            f"unknown ViT variant {variant!r}: expected '<name>/<patch>' or "
            f"'<name>/<patch_h>x<patch_w>' with name one of {list(VARIANTS)}, "
            "e.g. 'B/16', 'Ti/4', 'B/16x8'"
        )
    ph = int(match["ph"])
    pw = int(match["pw"]) if match["pw"] is not None else ph
    if ph < 1 or pw < 1:
        raise ValueError(f"patch size must be positive in variant {variant!r}")
    return dict(VARIANTS[match["name"]], patch_size=(ph, pw))


def _as_patch(patch_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(patch_size, (int, np.integer)):
        return int(patch_size), int(patch_size)
    ph, pw = patch_size
    return int(ph), int(pw)


def _compatible_sizes(size: int, patch: int) -> str:
    """Nearest image sizes divisible by `patch`, for error messages."""
    lower, upper = (size // patch) * patch, (size // patch + 1) * patch
    options = [s for s in (lower, upper) if s > 0]
    return " or ".join(str(s) for s in options)


class ViT(nn.Module):
    """Vision Transformer classifier.

    Attributes:
      num_classes: size of the zero-initialised ``head``; 0 = no head (logits are the
        pre-logits features).
      variant: ``"<Ti|S|B|L|H>/<patch>"`` (see `parse_variant`), or None when every
        override below is given.
      width, depth, mlp_dim, num_heads, patch_size: override the variant's value (None = keep).
        ``patch_size`` is an int or (height, width).
      pool: ``"cls"`` (prepend a learned token, classify from it) or ``"gap"`` (mean of the
        encoded patch tokens; no ``cls`` parameter, one token fewer).
      representation_size: adds ``pre_logits`` Dense + tanh before the head (official ViT
        pre-training); None = identity.
      dropout: dropout after the position embedding, attention output and MLP layers.
      attention_dropout: dropout on the attention weights. Needs the XLA attention path:
        with ``train=True`` an automatic ``attention_implementation`` then uses XLA, and an
        explicit ``"cudnn"`` raises.
      stochastic_depth: drop-path rate of the last block, linearly increasing from 0 at the
        first; whole examples drop a residual branch.
      patch_dropout: fraction of the patch tokens dropped in training, a fresh random
        subset per example, after the position embeddings (Liu et al. 2022, "PatchDropout";
        timm's ``patch_drop_rate``); a CLS token is always kept. Fewer tokens make a training
        step cheaper and regularise; evaluation sees all tokens. Training-time
        ``encoder_block_{i}`` intermediates then hold the kept tokens only.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``.
        Logits are returned as float32.
      attention_implementation: see `jaxvision.attention.dot_product_attention`.
      stem: how images become tokens. ``"patch"``: the official linear patch embedding (a
        conv with kernel = stride = patch). ``"conv"``: a convolutional stem (Xiao et al.
        2021, "Early convolutions help transformers see better"): n = log2(patch) 3x3 stride-2
        convs with LayerNorm + ReLU, channels doubling from ``width / 2**(n-1)`` (at least 8)
        to ``width``, then a 1x1 ``embedding``; the patch size must be a power of two. ``"spt"``: shifted patch
        tokenization (Lee et al. 2021): the image and its four half-patch diagonal shifts,
        patchified, LayerNorm, then a Dense ``embedding``. Both give the same token grid
        as ``"patch"`` and help ViTs trained from scratch on small datasets.
      locality_attention: locality self-attention (Lee et al. 2021): each attention layer
        learns its softmax temperature (``temperature``, init sqrt(head_dim)) and masks
        each token's attention to itself.
      head_zero_init: zero-initialise the head kernel (official ViT); else LeCun normal.
      gelu_approximate: tanh-approximate GELU in the MLP (True: flax's default, as the official
        and big_vision checkpoints were trained) or exact erf GELU (False: timm / PyTorch
        ``nn.GELU``; set it for weights imported from timm).
      scan_layers: run the encoder blocks with ``nn.scan`` (one block compiled once: compile
        time no longer grows with depth). Parameters are then stacked along a leading depth
        axis under ``Transformer/encoderblock``; `vit_layout.unstack_encoder_blocks` /
        `vit_layout.stack_encoder_blocks` convert to and from the official per-block layout, so
        checkpoints stay interchangeable. Dropout / stochastic-depth masks differ from the
        unrolled form's (same distribution, other random draws).
      remat: rematerialise each encoder block (``nn.remat``): its activations are recomputed
        in the backward pass instead of stored. Same results, less memory, more compute.
      resnet_stages: units per stage of a hybrid's ResNet stem (`jaxvision.models.resnet`),
        overriding the variant's ("R50+B/16" gives (3, 4, 9)); None = the variant's (none
        for a plain ViT); ``()`` = no stem. Needs ``stem="patch"``; ``patch_size`` then
        applies to the ResNet's feature map, so images need sides divisible by the total
        stride (ResNet stride x patch).
      resnet_width: the ResNet root's channels (official: 64; a multiple of 32).
      std_conv_eps: epsilon of the ResNet's weight standardisation: 1e-5 (official),
        1e-8 for timm weights (`jaxvision.pretrained` says so in its hints).
      resnet_convention: "official" or "timm": the normalisation arithmetic the hybrid's
        weights were trained with (see `jaxvision.models.resnet`).

    Call ``model.apply(variables, images, train=..., rngs={"dropout": key})``; the rng is only
    needed when ``train=True`` and some dropout/stochastic-depth rate is > 0.
    """

    num_classes: int
    variant: str | None = "B/16"
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    patch_size: int | Sequence[int] | None = None
    pool: str = "cls"
    representation_size: int | None = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth: float = 0.0
    patch_dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_implementation: str | None = None
    stem: str = "patch"
    locality_attention: bool = False
    head_zero_init: bool = True
    gelu_approximate: bool = True
    scan_layers: bool = False
    remat: bool = False
    resnet_stages: tuple[int, ...] | None = None
    resnet_width: int = 64
    std_conv_eps: float = 1e-5
    resnet_convention: str = "official"

    def resolved_config(self) -> dict[str, Any]:
        """The effective width/depth/mlp_dim/num_heads/patch_size after overrides."""
        config = parse_variant(self.variant) if self.variant is not None else {}
        overrides = dict(
            width=self.width,
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            patch_size=None if self.patch_size is None else _as_patch(self.patch_size),
        )
        config.update({k: v for k, v in overrides.items() if v is not None})
        if self.resnet_stages is not None:
            config["resnet_stages"] = tuple(int(n) for n in self.resnet_stages)
        config["resnet_stages"] = config.get("resnet_stages") or None
        missing = [k for k in overrides if k not in config]
        if missing:
            raise ValueError(
                f"ViT with variant=None needs explicit {', '.join(missing)}; "
                f"or give a variant such as 'B/16' (names: {list(VARIANTS)})"
            )
        if config["width"] % config["num_heads"]:
            raise ValueError(
                f"width {config['width']} is not divisible by num_heads {config['num_heads']}; "
                "choose a width that is a multiple of num_heads"
            )
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        ph, pw = config["patch_size"]
        if self.stem == "conv" and (ph != pw or ph & (ph - 1) or ph < 2):
            raise ValueError(
                f"stem='conv' needs a square power-of-two patch size (2, 4, 8, 16, ...), got "
                f"{ph}x{pw}: choose such a patch (e.g. variant 'Ti/4') or stem='patch'"
            )
        if config["resnet_stages"] is not None:
            if self.stem != "patch":
                raise ValueError(f"a hybrid (resnet_stages={config['resnet_stages']}) embeds the ResNet's "
                                 f"features with stem='patch'; got stem={self.stem!r}")
            if self.resnet_convention not in CONVENTIONS:
                raise ValueError(f"resnet_convention must be one of {CONVENTIONS}, got {self.resnet_convention!r}")
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
        for name in ("dropout", "attention_dropout", "stochastic_depth", "patch_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        return config

    @nn.compact
    def __call__(self, images, *, train: bool = False, return_attention_weights: bool = False):
        """images [B, H, W, C] in [-1, 1] -> (logits [B, num_classes] float32, intermediates).

        intermediates: "patch_embeddings" [B, N, D], "encoder_block_{i}" [B, T, D],
        "encoded" [B, T, D] (after the final norm), "pre_logits" [B, D or representation_size],
        and "attention_weights_{i}" [B, heads, T, T] when ``return_attention_weights``
        (computed on the XLA path); "resnet_features" [B, H/s, W/s, C] for a hybrid.
        T = N + 1 with pool="cls", else N.
        """
        cfg = self.resolved_config()
        if images.ndim != 4:
            raise ValueError(
                f"images must be NHWC [batch, height, width, channels], got {images.shape}"
            )
        ph, pw = cfg["patch_size"]
        _, height, width_px, _ = images.shape
        if cfg["resnet_stages"] is not None:
            stride = resnet_stride(cfg["resnet_stages"])
            for what, size, patch in (("height", height, ph), ("width", width_px, pw)):
                if size % (stride * patch):
                    raise ValueError(
                        f"image {what} {size} is not divisible by the hybrid's stride {stride * patch} "
                        f"(ResNet stem stride {stride} x patch {patch}): resize or crop to "
                        f"{_compatible_sizes(size, stride * patch)}"
                    )
        for what, size, patch in (("height", height, ph), ("width", width_px, pw)):
            if size % patch:
                raise ValueError(
                    f"image {what} {size} is not divisible by the patch {what} {patch}: "
                    f"resize or crop to {_compatible_sizes(size, patch)}, or choose a patch "
                    f"size that divides {size}"
                )

        intermediates: dict[str, jax.Array] = {}
        if cfg["resnet_stages"] is not None:
            images = resnet_stem(images, stages=cfg["resnet_stages"], width=self.resnet_width,
                                 eps=self.std_conv_eps, convention=self.resnet_convention,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
            intermediates["resnet_features"] = images
        x = self._embed(images, cfg["width"], ph, pw)
        batch, gh, gw, dim = x.shape
        x = x.reshape(batch, gh * gw, dim)
        intermediates["patch_embeddings"] = x

        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, dim), self.param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)

        x, block_outputs = Transformer(
            depth=cfg["depth"],
            mlp_dim=cfg["mlp_dim"],
            num_heads=cfg["num_heads"],
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            stochastic_depth=self.stochastic_depth,
            patch_dropout=self.patch_dropout,
            num_prefix_tokens=1 if self.pool == "cls" else 0,
            attention_implementation=self.attention_implementation,
            locality_attention=self.locality_attention,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scan_layers=self.scan_layers,
            remat=self.remat,
            name="Transformer",
        )(x, train=train, return_attention_weights=return_attention_weights)
        intermediates.update(block_outputs)
        intermediates["encoded"] = x

        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        if self.representation_size is not None:
            x = nn.Dense(
                self.representation_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="pre_logits",
            )(x)
            x = jnp.tanh(x)
        intermediates["pre_logits"] = x

        if self.num_classes:
            kernel_init = (
                nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
            )
            x = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=kernel_init,
                name="head",
            )(x)
        # float32 logits: softmax/cross-entropy on bf16 logits loses precision.
        return x.astype(jnp.float32), intermediates

    def _embed(self, images, width: int, ph: int, pw: int):
        """images [B, H, W, C] -> token grid [B, H/ph, W/pw, width], as `stem` says."""
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.stem == "patch":
            return conv(width, kernel_size=(ph, pw), strides=(ph, pw), padding="VALID", name="embedding")(images)
        if self.stem == "spt":
            x = jnp.concatenate([images] + [shift(images, dy * (ph // 2), dx * (pw // 2))
                                            for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))], axis=-1)
            b, h, w, c = x.shape
            x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, h // ph, w // pw, ph * pw * c)
            x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="spt_norm")(x)
            return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="embedding")(x)
        # "conv": 3x3 stride-2 convs until the patch stride is reached, then a 1x1 projection.
        n = ph.bit_length() - 1
        x = images
        for i in range(n):
            x = StridedConv3x3(max(width >> (n - 1 - i), 8), dtype=self.dtype, param_dtype=self.param_dtype,
                               name=f"stem_conv_{i}")(x)
            x = nn.relu(nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"stem_norm_{i}")(x))
        return conv(width, kernel_size=(1, 1), name="embedding")(x)
