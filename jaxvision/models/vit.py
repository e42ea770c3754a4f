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

Inputs are NHWC float images scaled to [-1, 1] (the official and big_vision convention;
pretrained checkpoints expect it). Any channel count works (1 for Fashion-MNIST).

This module knows nothing of data, training or checkpoints.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.attention import dot_product_attention

__all__ = ["VARIANTS", "ViT", "parse_variant", "stack_encoder_blocks", "unstack_encoder_blocks"]

# (width, depth, mlp_dim, num_heads) of the standard sizes (ViT paper, DeiT for Ti).
VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}

STEMS = ("patch", "conv", "spt")

_VARIANT_RE = re.compile(r"^(?P<name>[A-Za-z]+)/(?P<ph>\d+)(?:x(?P<pw>\d+))?$")


def parse_variant(variant: str) -> dict[str, Any]:
    """``"B/16"`` -> ``dict(width, depth, mlp_dim, num_heads, patch_size=(16, 16))``.

    Any patch size is accepted ("Ti/4", "S/7"); "B/16x8" gives non-square 16x8 patches
    (height x width).
    """
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


def _drop_path(module: nn.Module, x: jax.Array, rate, train: bool) -> jax.Array:
    """Stochastic depth: drop a residual branch for whole examples (scaled by 1/keep).

    `rate` is a Python float, or a traced scalar when the blocks are scanned (each layer's
    rate is then an element of the scanned input).
    """
    if not train or (isinstance(rate, (int, float)) and rate == 0.0):
        return x
    keep_prob = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(module.make_rng("dropout"), keep_prob, shape)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with the official parameter layout; the core is `dot_product_attention`.

    Attention dropout needs the attention weights, so it runs only on the XLA path: with
    ``train=True`` and ``dropout_rate > 0`` an automatic implementation selects XLA, and an
    explicit ``implementation="cudnn"`` raises.
    """

    num_heads: int
    dropout_rate: float = 0.0
    implementation: str | None = None
    locality: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_weights: bool = False):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        dense = lambda name, **kw: nn.DenseGeneral(  # noqa: E731
            name=name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            **kw,
        )
        q = dense("query", features=(self.num_heads, head_dim))(x)
        k = dense("key", features=(self.num_heads, head_dim))(x)
        v = dense("value", features=(self.num_heads, head_dim))(x)
        mask = None
        if self.locality:
            # Locality self-attention (Lee et al. 2021): a learned softmax temperature
            # (init sqrt(d_k), so training starts from standard attention) and no token
            # attending to itself, which sharpens attention on small datasets.
            temperature = self.param("temperature", nn.initializers.constant(head_dim**0.5), (),
                                     self.param_dtype)
            q = q * (head_dim**0.5 / temperature).astype(q.dtype)
            mask = ~jnp.eye(x.shape[1], dtype=bool)[None, None]

        use_dropout = train and self.dropout_rate > 0.0
        # Weights only exist on the XLA path; asking for them overrides a cudnn choice.
        implementation = "xla" if return_weights else self.implementation
        result = dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            implementation=implementation,
            return_weights=return_weights,
            dropout_rate=self.dropout_rate if use_dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
        )
        out, weights = result if return_weights else (result, None)
        out = dense("out", features=width, axis=(-2, -1))(out)
        return out, weights


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dropout -> Dense -> Dropout (official initialisers)."""

    mlp_dim: int
    dropout: float = 0.0
    gelu_approximate: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features,
            name=name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        y = dense(self.mlp_dim, "Dense_0")(x)
        # tanh-approximate GELU (flax's default), as the official checkpoints were trained;
        # exact (erf) GELU for weights trained with it (timm / PyTorch nn.GELU).
        y = nn.gelu(y, approximate=self.gelu_approximate)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        y = dense(x.shape[-1], "Dense_1")(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    attention_implementation: str | None = None
    locality_attention: bool = False
    gelu_approximate: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_attention_weights: bool = False,
                 drop_path_rate=None):
        # Positional arguments are accepted so that nn.remat can mark train /
        # return_attention_weights static; `drop_path_rate` (a traced scalar) overrides the
        # `drop_path` field when the blocks are scanned.
        rate = self.drop_path if drop_path_rate is None else drop_path_rate
        norm = lambda name: nn.LayerNorm(  # noqa: E731
            name=name, dtype=self.dtype, param_dtype=self.param_dtype
        )
        y = norm("LayerNorm_0")(x)
        y, weights = MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout,
            implementation=self.attention_implementation,
            locality=self.locality_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MultiHeadDotProductAttention_1",
        )(y, train=train, return_weights=return_attention_weights)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        x = x + _drop_path(self, y, rate, train)

        y = norm("LayerNorm_2")(x)
        y = MlpBlock(
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="MlpBlock_3",
        )(y, train=train)
        return x + _drop_path(self, y, rate, train), weights


class _ScannedEncoderBlock(Encoder1DBlock):
    """`Encoder1DBlock` as an `nn.scan` body: (x, rate) -> (x, (x, attention weights)).

    Same parameters and computation as `Encoder1DBlock`; the per-layer drop-path rate is the
    scanned input and each block's output is a scanned output (for the intermediates).
    """

    def __call__(self, x, drop_path_rate, train, return_attention_weights):
        x, weights = super().__call__(x, train, return_attention_weights, drop_path_rate)
        return x, (x, weights)


class AddPositionEmbs(nn.Module):
    """Learned position embeddings, (1, tokens, width), init normal(0.02)."""

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (1, x.shape[1], x.shape[2])
        # A model initialised at one resolution and applied at another would otherwise fail
        # deep inside Flax with a param-shape error; say what happened and what to do.
        if self.has_variable("params", "pos_embedding"):
            stored = self.get_variable("params", "pos_embedding").shape
            if tuple(stored) != shape:
                raise ValueError(
                    f"pos_embedding has shape {tuple(stored)} but these images give "
                    f"{shape[1]} tokens of width {shape[2]} (expected {shape}); the model was "
                    "initialised for another image/patch size: resample the position "
                    "embeddings to the new grid (bilinear, CLS entry kept aside) or use the "
                    "original image size"
                )
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), shape, self.param_dtype
        )
        return x + pos.astype(x.dtype)


class Transformer(nn.Module):
    """Position embedding, dropout, `depth` encoder blocks, final LayerNorm."""

    depth: int
    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth: float = 0.0
    patch_dropout: float = 0.0
    num_prefix_tokens: int = 0
    attention_implementation: str | None = None
    locality_attention: bool = False
    gelu_approximate: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    def _block_kwargs(self) -> dict[str, Any]:
        return dict(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            attention_implementation=self.attention_implementation,
            locality_attention=self.locality_attention,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def _rate(self, i: int) -> float:
        # Drop-path rate grows linearly from 0 (first block) to stochastic_depth (last).
        return self.stochastic_depth * i / max(self.depth - 1, 1)

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_attention_weights: bool = False):
        intermediates: dict[str, jax.Array] = {}
        x = AddPositionEmbs(param_dtype=self.param_dtype, name="posembed_input")(x)
        if train and self.patch_dropout > 0.0:
            x = self._drop_patches(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        if self.scan_layers:
            # One block traced and compiled once, its parameters stacked along a leading
            # depth axis under "encoderblock" (see stack_encoder_blocks). Dropout masks
            # differ from the unrolled form's (per-layer split keys).
            block = _ScannedEncoderBlock
            if self.remat:
                # self=0, x=1, rate=2: train and return_attention_weights are static.
                block = nn.remat(block, static_argnums=(3, 4), prevent_cse=False)
            varying_rate = train and self.stochastic_depth > 0.0
            rates = (jnp.asarray([self._rate(i) for i in range(self.depth)], jnp.float32)
                     if varying_rate else 0.0)
            scanned = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0 if varying_rate else nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.depth,
            )
            x, (outputs, weights) = scanned(**self._block_kwargs(), name="encoderblock")(
                x, rates, train, return_attention_weights
            )
            for i in range(self.depth):
                intermediates[f"encoder_block_{i}"] = outputs[i]
                if return_attention_weights:
                    intermediates[f"attention_weights_{i}"] = weights[i]
        else:
            block = Encoder1DBlock
            if self.remat:
                # self=0, x=1: train and return_attention_weights are static.
                block = nn.remat(block, static_argnums=(2, 3))
            for i in range(self.depth):
                x, weights = block(
                    **self._block_kwargs(), drop_path=self._rate(i), name=f"encoderblock_{i}"
                )(x, train, return_attention_weights)
                intermediates[f"encoder_block_{i}"] = x
                if return_attention_weights:
                    intermediates[f"attention_weights_{i}"] = weights
        x = nn.LayerNorm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x, intermediates

    def _drop_patches(self, x):
        """Keep a random subset of the patch tokens of each example (prefix tokens stay).

        Patch dropout (Liu et al. 2022): after the position embeddings, so each kept token
        still says where it came from. ``round(N * (1 - rate))`` of the N patch tokens are
        kept, a fresh uniform draw per example; the blocks then cost less per image (fewer
        tokens), and evaluation (train=False) sees every token.
        """
        prefix, patches = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        n = patches.shape[1]
        keep = max(1, int(round(n * (1.0 - self.patch_dropout))))
        scores = jax.random.uniform(self.make_rng("dropout"), patches.shape[:2])
        kept = jnp.argsort(scores, axis=1)[:, :keep]
        patches = jnp.take_along_axis(patches, kept[:, :, None], axis=1)
        return jnp.concatenate([prefix, patches], axis=1)


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
        axis under ``Transformer/encoderblock``; `unstack_encoder_blocks` /
        `stack_encoder_blocks` convert to and from the official per-block layout, so
        checkpoints stay interchangeable. Dropout / stochastic-depth masks differ from the
        unrolled form's (same distribution, other random draws).
      remat: rematerialise each encoder block (``nn.remat``): its activations are recomputed
        in the backward pass instead of stored. Same results, less memory, more compute.

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
        (computed on the XLA path). T = N + 1 with pool="cls", else N.
        """
        cfg = self.resolved_config()
        if images.ndim != 4:
            raise ValueError(
                f"images must be NHWC [batch, height, width, channels], got {images.shape}"
            )
        ph, pw = cfg["patch_size"]
        _, height, width_px, _ = images.shape
        for what, size, patch in (("height", height, ph), ("width", width_px, pw)):
            if size % patch:
                raise ValueError(
                    f"image {what} {size} is not divisible by the patch {what} {patch}: "
                    f"resize or crop to {_compatible_sizes(size, patch)}, or choose a patch "
                    f"size that divides {size}"
                )

        intermediates: dict[str, jax.Array] = {}
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
            x = jnp.concatenate([images] + [_shift(images, dy * (ph // 2), dx * (pw // 2))
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


def _shift(images, dy: int, dx: int):
    """Translate [B, H, W, C] images by (dy, dx) pixels, filling with zeros (SPT's shifts)."""
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top: top + h, left: left + w]


# --- Parameter layouts: per-block (official names) <-> stacked (scan_layers=True) ---------

_BLOCK_KEY = re.compile(r"^encoderblock_(\d+)$")
_STACKED_KEY = "encoderblock"


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _stack_leaves(*leaves):
    if all(_is_array(leaf) for leaf in leaves):
        if all(isinstance(leaf, np.ndarray) for leaf in leaves):
            return np.stack(leaves)
        return jnp.stack(leaves)
    return leaves[0]  # None / optax.MaskedNode placeholders: the same in every block


def _map_block_dicts(tree, fn):
    """Apply `fn` to every dict in `tree` (through dicts, lists, tuples, namedtuples and
    dataclasses such as TrainState / optax states), innermost first."""
    import dataclasses

    if isinstance(tree, dict) or (hasattr(tree, "items") and hasattr(tree, "keys")):
        return fn({k: _map_block_dicts(v, fn) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple (optax states)
        return type(tree)(*(_map_block_dicts(v, fn) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_block_dicts(v, fn) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: _map_block_dicts(getattr(tree, f.name), fn)
                   for f in dataclasses.fields(tree) if f.init}
        return dataclasses.replace(tree, **changes)
    return tree


def stack_encoder_blocks(tree):
    """Per-block layout -> the stacked layout of ``ViT(scan_layers=True)``.

    Every dict holding ``encoderblock_0 .. encoderblock_{n-1}`` gets one ``encoderblock``
    entry instead, whose leaves are the blocks' leaves stacked along a new leading axis.
    Works on ``params`` and on anything that mirrors them (a TrainState, optimizer moments),
    so a checkpoint of either form can be loaded into the other. Exact: no value changes.
    """
    import jax.tree_util as jtu

    def fn(d):
        indices = sorted(int(m.group(1)) for k in d if (m := _BLOCK_KEY.match(str(k))))
        if not indices:
            return d
        if indices != list(range(len(indices))):
            raise ValueError(f"encoder blocks {indices} are not numbered 0..{len(indices) - 1}")
        if _STACKED_KEY in d:
            raise ValueError("found both per-block 'encoderblock_i' and stacked 'encoderblock' entries")
        blocks = [d[f"encoderblock_{i}"] for i in indices]
        structure = jtu.tree_structure(blocks[0], is_leaf=lambda x: x is None)
        for i, block in enumerate(blocks[1:], 1):
            if jtu.tree_structure(block, is_leaf=lambda x: x is None) != structure:
                raise ValueError(f"encoderblock_{i} differs in structure from encoderblock_0")
        stacked = jtu.tree_map(_stack_leaves, *blocks, is_leaf=lambda x: x is None)
        out = {k: v for k, v in d.items() if not _BLOCK_KEY.match(str(k))}
        out[_STACKED_KEY] = stacked
        return out

    return _map_block_dicts(tree, fn)


def unstack_encoder_blocks(tree):
    """The stacked layout of ``ViT(scan_layers=True)`` -> per-block official names.

    Inverse of `stack_encoder_blocks`: an ``encoderblock`` entry with leaves of leading size
    ``depth`` becomes ``encoderblock_0 .. encoderblock_{depth-1}``. Exact.
    """
    import jax.tree_util as jtu

    def fn(d):
        if _STACKED_KEY not in d or not hasattr(d[_STACKED_KEY], "items"):
            return d
        stacked = d[_STACKED_KEY]
        depths = {leaf.shape[0] for leaf in jtu.tree_leaves(stacked) if _is_array(leaf)}
        if len(depths) != 1:
            raise ValueError(f"stacked encoder block leaves disagree on the depth axis: {sorted(depths)}")
        (depth,) = depths
        out = {k: v for k, v in d.items() if k != _STACKED_KEY}
        for i in range(depth):
            out[f"encoderblock_{i}"] = jtu.tree_map(
                lambda leaf, i=i: leaf[i] if _is_array(leaf) else leaf, stacked,
                is_leaf=lambda x: x is None)
        return out

    return _map_block_dicts(tree, fn)
