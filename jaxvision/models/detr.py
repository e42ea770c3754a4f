"""DETR-style set prediction on ViT tokens (Carion et al. 2020; scenic's ViT-DETR).

The ViT (``num_classes=0``) encodes the image; its ``"encoded"`` patch tokens are the
memory of a small transformer decoder. ``num_queries`` learned query embeddings attend to
each other and to the memory (keys carry a fixed 2-D sine position code of the token
grid, as DETR adds to its encoder features), layer after layer. After every decoder layer
the shared heads predict a class (``num_classes`` + no-object, the last index) and a box
``[cx, cy, w, h]`` in [0, 1] for each query; the earlier layers' predictions feed DETR's
auxiliary losses. The backbone's parameters sit under ``"backbone"``, so a classifier
checkpoint loads there unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxvision.models.vit import ViT

__all__ = ["DETR", "DecoderLayer", "sine_position_code"]


def sine_position_code(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """DETR's 2-D sine position code of a token grid, [grid_h * grid_w, dim]: half the
    channels encode y, half x, each as sin/cos at geometric frequencies of the normalised
    coordinate (x 2 pi)."""
    if dim % 4:
        raise ValueError(f"the sine position code needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = temperature ** (np.arange(quarter) / quarter)
    ys = (np.arange(grid_h) + 0.5) / grid_h * 2 * np.pi
    xs = (np.arange(grid_w) + 0.5) / grid_w * 2 * np.pi
    yy, xx = np.meshgrid(ys, xs, indexing="ij")

    def code(v):
        v = v.reshape(-1, 1) / freqs
        return np.concatenate([np.sin(v), np.cos(v)], axis=1)

    return np.concatenate([code(yy), code(xx)], axis=1).astype(np.float32)


class DecoderLayer(nn.Module):
    """Pre-norm DETR decoder layer: self-attention of the queries, cross-attention to the
    memory, MLP; the query position embedding is added to queries and keys at every layer."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, query_pos, memory, memory_pos):
        dim = x.shape[-1]
        h = nn.LayerNorm(name="norm_self")(x)
        q = h + query_pos
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, name="self_attention")(
            inputs_q=q, inputs_k=q, inputs_v=h)
        h = nn.LayerNorm(name="norm_cross")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, name="cross_attention")(
            inputs_q=h + query_pos, inputs_k=memory + memory_pos, inputs_v=memory)
        h = nn.LayerNorm(name="norm_mlp")(x)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(h)
        return x + nn.Dense(dim, dtype=self.dtype, name="mlp_out")(nn.gelu(h))


class DETR(nn.Module):
    """backbone: a ViT with ``num_classes=0`` (pool "gap" or "cls"; the CLS token is left
    out of the memory). Returns ({"logits": [L, B, Q, C+1], "boxes": [L, B, Q, 4]}, the
    backbone's intermediates), L = ``decoder_layers`` (the last is the prediction)."""

    backbone: ViT
    num_classes: int
    num_queries: int = 10
    decoder_layers: int = 2
    hidden_dim: int | None = None  # None: the backbone's width
    num_heads: int = 4
    mlp_dim: int | None = None  # None: 2 x hidden_dim
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.backbone.num_classes:
            raise ValueError("DETR's backbone must be a ViT with num_classes=0 (no classification head)")
        _, inter = self.backbone(images, train=train)
        memory = inter["encoded"]
        if self.backbone.pool == "cls":
            memory = memory[:, 1:]
        ph, pw = self.backbone.resolved_config()["patch_size"]
        gh, gw = images.shape[1] // ph, images.shape[2] // pw
        dim = self.hidden_dim or memory.shape[-1]
        if memory.shape[-1] != dim:
            memory = nn.Dense(dim, dtype=self.dtype, name="input_projection")(memory)
        memory_pos = jnp.asarray(sine_position_code(gh, gw, dim), memory.dtype)[None]

        batch = images.shape[0]
        query_pos = self.param("query_embedding", nn.initializers.normal(1.0), (self.num_queries, dim))
        query_pos = jnp.broadcast_to(query_pos[None].astype(memory.dtype), (batch, self.num_queries, dim))
        x = jnp.zeros_like(query_pos)
        out_norm = nn.LayerNorm(name="decoder_norm")
        class_head = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_head")
        box_head = [nn.Dense(dim, dtype=self.dtype, name=f"box_head_{i}") for i in range(2)]
        box_out = nn.Dense(4, dtype=self.dtype, name="box_head_out")
        logits, boxes = [], []
        for i in range(self.decoder_layers):
            x = DecoderLayer(self.num_heads, self.mlp_dim or 2 * dim, dtype=self.dtype, name=f"decoder_{i}")(
                x, query_pos, memory, memory_pos)
            h = out_norm(x)
            logits.append(class_head(h).astype(jnp.float32))
            b = h
            for layer in box_head:
                b = nn.relu(layer(b))
            boxes.append(nn.sigmoid(box_out(b).astype(jnp.float32)))
        return {"logits": jnp.stack(logits), "boxes": jnp.stack(boxes)}, inter


class CenterDetector(nn.Module):
    """The dense anchor-free alternative (CenterNet, Zhou et al. 2019, on ViT tokens as in
    ViTDet's simple feature map): the encoded patch tokens as a grid, then two 3x3-conv
    heads: a class heatmap (sigmoid, one channel per class; a peak marks an object's
    centre) and the box as distances from each cell's centre to the four sides (normalised
    to the image, softplus). Where the 2x finer output grid comes from, `upsample`:

    * "features": a 2x2 transposed conv upsamples the tokens first; the heads' 3x3 convs
      run on the 2x grid (4x their cost, which on a 2-core CPU exceeds the backbone's).
    * "outputs": the heads' 3x3 convs run on the token grid and their last layer is a 2x2
      stride-2 transposed conv, so only the few output channels live on the 2x grid.
    * "none": heads and outputs on the token grid (one cell per patch).

    Returns ({"heatmap": [B, G, G', C] logits, "ltrb": [B, G, G', 4]}, backbone intermediates)."""

    backbone: ViT
    num_classes: int
    head_dim: int = 64
    upsample: str = "features"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.backbone.num_classes:
            raise ValueError("the backbone must be a ViT with num_classes=0 (no classification head)")
        if self.upsample not in ("features", "outputs", "none"):
            raise ValueError(f"upsample must be 'features', 'outputs' or 'none', got {self.upsample!r}")
        _, inter = self.backbone(images, train=train)
        tokens = inter["encoded"]
        if self.backbone.pool == "cls":
            tokens = tokens[:, 1:]
        ph, pw = self.backbone.resolved_config()["patch_size"]
        gh, gw = images.shape[1] // ph, images.shape[2] // pw
        x = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])
        if self.upsample == "features":
            x = nn.ConvTranspose(self.head_dim, (2, 2), strides=(2, 2), dtype=self.dtype, name="upsample")(x)
        else:
            x = nn.Dense(self.head_dim, dtype=self.dtype, name="project")(x)
        # One name for the norm in every form: "features" checkpoints of earlier runs load as they were.
        x = nn.gelu(nn.LayerNorm(name="upsample_norm")(x))
        outputs = {}
        # Heatmap bias: sigmoid prior 0.1 (CenterNet's -2.19), so the focal loss starts calm.
        for name, channels, bias in (("heatmap", self.num_classes, -2.19), ("ltrb", 4, 0.0)):
            h = nn.relu(nn.Conv(self.head_dim, (3, 3), dtype=self.dtype, name=f"{name}_conv")(x))
            if self.upsample == "outputs":
                out = nn.ConvTranspose(channels, (2, 2), strides=(2, 2), dtype=self.dtype,
                                       bias_init=nn.initializers.constant(bias), name=f"{name}_out")
            else:
                out = nn.Conv(channels, (1, 1), dtype=self.dtype, bias_init=nn.initializers.constant(bias),
                              name=f"{name}_out")
            outputs[name] = out(h).astype(jnp.float32)
        # Distances in image units; softplus keeps them positive, /grid makes 1 = one cell.
        grid = outputs["ltrb"].shape
        outputs["ltrb"] = nn.softplus(outputs["ltrb"]) / jnp.array([grid[2], grid[1]] * 2, jnp.float32)
        return outputs, inter
