"""Segmenter (Strudel et al. 2021, "Segmenter: Transformer for Semantic Segmentation").

A ViT encoder (`jaxvision.models.vit.ViT` without head; its "encoded" patch tokens) and
one of two decoders, then bilinear upsampling of the patch-level class scores to pixels:

* "linear": a Dense layer from each patch token to class logits.
* "mask_transformer": `num_classes` learned class embeddings join the (projected) patch
  tokens in `depth` (2) transformer blocks and a LayerNorm; patches and classes are
  projected, L2-normalised, and each patch's masks are its dot products with every
  class embedding, normalised by a LayerNorm over the classes ("mask_norm").

Parameters: ``encoder`` (the ViT's own layout, so classification checkpoints load into it
through `jaxvision.pretrained`) and ``decoder``. flax.linen only: no data or training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.transformer import Encoder1DBlock
from jaxvision.models.vit import ViT

__all__ = ["DECODERS", "LinearDecoder", "MaskTransformerDecoder", "Segmenter"]

DECODERS = ("linear", "mask_transformer")


class LinearDecoder(nn.Module):
    """patch tokens [B, N, D] -> class logits [B, N, num_classes]."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        del train
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(tokens)


def _l2_normalize(x, eps=1e-6):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MaskTransformerDecoder(nn.Module):
    """patch tokens [B, N, D] -> class masks [B, N, num_classes] (Segmenter's mask transformer)."""

    num_classes: int
    width: int
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int | None = None  # None: 4 x width
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        n = tokens.shape[1]
        x = nn.Dense(self.width, dtype=self.dtype, name="proj_dec")(tokens)
        cls = self.param("cls_emb", nn.initializers.normal(0.02), (1, self.num_classes, self.width))
        x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0],) + cls.shape[1:])], axis=1)
        for i in range(self.depth):
            x, _ = Encoder1DBlock(mlp_dim=self.mlp_dim or 4 * self.width, num_heads=self.num_heads,
                                  dropout=self.dropout, dtype=self.dtype, name=f"block_{i}")(x, train)
        x = nn.LayerNorm(dtype=self.dtype, name="decoder_norm")(x)
        patches, classes = x[:, :n], x[:, n:]
        patches = _l2_normalize(nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="proj_patch")(patches))
        classes = _l2_normalize(nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="proj_classes")(classes))
        masks = jnp.einsum("bnd,bkd->bnk", patches, classes)
        return nn.LayerNorm(dtype=self.dtype, name="mask_norm")(masks)


class Segmenter(nn.Module):
    """images [B, H, W, C] in [-1, 1] -> per-pixel class logits [B, H, W, num_classes] (float32).

    encoder: a `ViT` with num_classes=0 and no patch dropout (every patch needs its token).
    decoder: "linear" or "mask_transformer"; decoder_width / decoder_heads size the latter
    (None: the encoder's width / heads).
    """

    num_classes: int
    encoder: ViT
    decoder: str = "mask_transformer"
    decoder_depth: int = 2
    decoder_width: int | None = None
    decoder_heads: int | None = None
    decoder_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.encoder.num_classes != 0:
            raise ValueError(f"the Segmenter's encoder must have num_classes=0 (no head), got "
                             f"{self.encoder.num_classes}")
        if self.encoder.patch_dropout:
            raise ValueError("the Segmenter's encoder must keep every patch token: set patch_dropout=0")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (background included), got {self.num_classes}")
        cfg = self.encoder.resolved_config()
        ph, pw = cfg["patch_size"]
        if cfg["resnet_stages"] is not None:
            raise ValueError("hybrid (ResNet-stem) encoders are not supported by the Segmenter; use a plain ViT")
        b, h, w, _ = images.shape
        _, inter = self.encoder(images, train=train)
        tokens = inter["encoded"]
        if self.encoder.pool == "cls":
            tokens = tokens[:, 1:]
        gh, gw = h // ph, w // pw
        if self.decoder == "linear":
            scores = LinearDecoder(self.num_classes, dtype=self.dtype, name="decoder")(tokens, train=train)
        else:
            scores = MaskTransformerDecoder(
                self.num_classes, width=self.decoder_width or cfg["width"], depth=self.decoder_depth,
                mlp_dim=cfg["mlp_dim"] if self.decoder_width is None else None,
                num_heads=self.decoder_heads or cfg["num_heads"], dropout=self.decoder_dropout, dtype=self.dtype,
                name="decoder")(tokens, train=train)
        scores = scores.reshape(b, gh, gw, self.num_classes).astype(jnp.float32)
        # Bilinear upsampling (half-pixel centres) of the patch grid to the image's pixels.
        return jax.image.resize(scores, (b, h, w, self.num_classes), method="bilinear")
