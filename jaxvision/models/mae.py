"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

A random ``mask_ratio`` of each image's patches is removed (a fresh draw per example:
argsort of uniform noise, the first ``K`` kept); the ViT encoder sees only the ``K``
visible patches, after their position embeddings; a lightweight Transformer decoder sees
the encoded visible tokens and a shared learned mask token at every removed position,
each with a decoder position embedding, and predicts every patch's pixels. The loss
(`jaxvision.tasks.mae`) is on the removed patches only.

Parameters::

    encoder/...          exactly `ViT(num_classes=0)`'s tree: embedding, cls (pool="cls"),
                         Transformer/posembed_input, Transformer/encoderblock_{i},
                         Transformer/encoder_norm (official names), so ``params["encoder"]``
                         loads into a classification ViT by name (`jaxvision.pretrained`)
    decoder_embed        Dense encoder width -> decoder width
    mask_token           (1, 1, decoder width)
    decoder/...          a `Transformer`: posembed_input (1, N(+1), decoder width),
                         encoderblock_{i}, encoder_norm
    decoder_pred         Dense decoder width -> patch_h * patch_w * channels

Pixels of a patch are ordered (row, column, channel), as `patchify` writes them. This
module knows nothing of data or training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.transformer import Transformer
from jaxvision.models.vit import ViT

__all__ = ["MAE", "MAEEncoder", "check_mask_ratio", "num_visible", "patchify", "random_masking", "unpatchify"]


def check_mask_ratio(mask_ratio: float) -> float:
    if not isinstance(mask_ratio, (int, float)) or not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1) (the fraction of patches removed; the paper's "
                         f"default is 0.75), got {mask_ratio!r}")
    return float(mask_ratio)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: int(N * (1 - ratio)) as in the paper, at least 1 and at
    most N - 1 (something is always visible and something always removed)."""
    check_mask_ratio(mask_ratio)
    return min(max(int(num_patches * (1.0 - mask_ratio)), 1), num_patches - 1)


def random_masking(noise: jax.Array, keep: int):
    """Per-example random masking from uniform `noise` [B, N].

    Returns (keep_ids [B, keep]: the visible patches, in the order the encoder sees them;
    mask [B, N]: 1.0 where a patch is removed, 0.0 where visible, in image order;
    restore_ids [B, N]: where each image-order patch sits in the shuffled order
    [visible..., removed...], so ``take_along_axis(shuffled, restore_ids)`` un-shuffles).
    """
    shuffle_ids = jnp.argsort(noise, axis=1)  # ascending: the smallest noise is kept
    restore_ids = jnp.argsort(shuffle_ids, axis=1)
    keep_ids = shuffle_ids[:, :keep]
    n = noise.shape[1]
    shuffled_mask = (jnp.arange(n) >= keep).astype(jnp.float32)[None].repeat(noise.shape[0], 0)
    mask = jnp.take_along_axis(shuffled_mask, restore_ids, axis=1)
    return keep_ids, mask, restore_ids


def patchify(images, patch_size: tuple[int, int]):
    """[B, H, W, C] -> [B, N, ph * pw * C], patches in row-major grid order (the ViT's
    token order), pixels (row, column, channel) within a patch."""
    b, h, w, c = images.shape
    ph, pw = patch_size
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches, patch_size: tuple[int, int], image_shape: tuple[int, int, int]):
    """The inverse of `patchify`: [B, N, ph * pw * C] -> [B, H, W, C]."""
    h, w, c = image_shape
    ph, pw = patch_size
    b = patches.shape[0]
    x = patches.reshape(b, h // ph, w // pw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class MAEEncoder(ViT):
    """The ViT's stem and encoder (same fields, same parameter names and shapes) run on
    the visible patches only: ``__call__(images, keep_ids)`` -> encoded [B, (1 +) K, D]
    after the final norm. Use ``num_classes=0``: MAE pretraining has no head."""

    @nn.compact
    def __call__(self, images, keep_ids=None, *, train: bool = False):
        cfg = self.resolved_config()
        ph, pw = cfg["patch_size"]
        x = self._embed(images, cfg["width"], ph, pw)
        batch, gh, gw, dim = x.shape
        x = x.reshape(batch, gh * gw, dim)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, dim), self.param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)
        x, _ = Transformer(
            depth=cfg["depth"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"], dropout=self.dropout,
            attention_dropout=self.attention_dropout, stochastic_depth=self.stochastic_depth,
            patch_dropout=self.patch_dropout, num_prefix_tokens=1 if self.pool == "cls" else 0,
            attention_implementation=self.attention_implementation, locality_attention=self.locality_attention,
            gelu_approximate=self.gelu_approximate, dtype=self.dtype, param_dtype=self.param_dtype,
            scan_layers=self.scan_layers, remat=self.remat, name="Transformer",
        )(x, train=train, keep_indices=keep_ids)
        return x


class MAE(nn.Module):
    """Masked autoencoder around `encoder` (an `MAEEncoder`, i.e. a ViT's configuration).

    Attributes:
      encoder: the encoder module; its parameters are ``params["encoder"]``.
      mask_ratio: fraction of each image's patches removed, in (0, 1); paper: 0.75.
      decoder_width, decoder_depth, decoder_heads, decoder_mlp_dim: the decoder
        Transformer (paper: 512 wide, 8 blocks, 16 heads, MLP 4x width; None = 4x width).
        Its cost is over all N tokens, so on small machines keep it narrower than the encoder.

    ``__call__(images, *, train, noise=None)`` -> (pred [B, N, ph*pw*C] float32,
    mask [B, N] 1.0 = removed). The masking noise is `noise` [B, N] when given, else drawn
    from the "mask" rng.
    """

    encoder: MAEEncoder
    mask_ratio: float = 0.75
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def patch_size(self) -> tuple[int, int]:
        return tuple(self.encoder.resolved_config()["patch_size"])

    @nn.compact
    def __call__(self, images, *, train: bool = False, noise=None):
        check_mask_ratio(self.mask_ratio)
        if self.encoder.num_classes:
            raise ValueError("the MAE encoder has no head: build it with num_classes=0")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} is not divisible by decoder_heads "
                             f"{self.decoder_heads}: choose a width that is a multiple of the heads")
        ph, pw = self.patch_size()
        b, h, w, c = images.shape
        if h % ph or w % pw:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        n = (h // ph) * (w // pw)
        if noise is None:
            noise = jax.random.uniform(self.make_rng("mask"), (b, n))
        elif noise.shape != (b, n):
            raise ValueError(f"noise must have shape (batch, patches) = {(b, n)}, got {noise.shape}")
        keep_ids, mask, restore_ids = random_masking(noise, num_visible(n, self.mask_ratio))

        x = self.encoder(images, keep_ids, train=train)
        prefix = 1 if self.encoder.pool == "cls" else 0
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform())
        x = dense(self.decoder_width, "decoder_embed")(x)
        mask_token = self.param("mask_token", nn.initializers.normal(stddev=0.02), (1, 1, self.decoder_width),
                                self.param_dtype)
        visible = x[:, prefix:]
        removed = jnp.broadcast_to(mask_token.astype(x.dtype), (b, n - visible.shape[1], self.decoder_width))
        # [visible..., removed...] is the shuffled order; restore_ids puts it back in image order.
        tokens = jnp.take_along_axis(jnp.concatenate([visible, removed], axis=1), restore_ids[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :prefix], tokens], axis=1)
        x, _ = Transformer(
            depth=self.decoder_depth, mlp_dim=self.decoder_mlp_dim or 4 * self.decoder_width,
            num_heads=self.decoder_heads, num_prefix_tokens=prefix, gelu_approximate=self.encoder.gelu_approximate,
            attention_implementation=self.encoder.attention_implementation, dtype=self.dtype,
            param_dtype=self.param_dtype, name="decoder",
        )(x, train=train)
        pred = dense(ph * pw * c, "decoder_pred")(x[:, prefix:])
        return pred.astype(jnp.float32), mask
