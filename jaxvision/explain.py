"""Where a ViT looks: per-layer attention maps and attention rollout.

Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers"):
the heads of each layer's attention are fused (mean, max or min), optionally the lowest
``discard_ratio`` share of each example's fused entries is set to zero (vit-explain's
noise filter; here per example: vit-explain's own code filters only the first example of
a batch), the identity is added for the residual connection and the rows are
renormalised, A' = rownorm(A + I), and the layers are multiplied,
R = A'_L ... A'_2 A'_1. Row t of R says how much each input token flows into the output
token t. The map of a CLS model is the CLS row over the patch tokens; a GAP model
classifies the mean of its output tokens, so its map is the mean row.

The attention weights come from ``ViT.apply(..., return_attention_weights=True)``,
which computes them on the XLA path even where a fused kernel (cuDNN) is the model's
default, so explanations need no change of the model. Everything is batched and jitted
(`make_explainer`).

    explain = make_explainer(model, head_fusion="mean", discard_ratio=0.9)
    out = explain(variables, images)   # logits, rollout [B, gh, gw], layers [L, B, gh, gw]
    rgb = overlay(images[0], out["rollout"][0])
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["HEAD_FUSIONS", "attention_stack", "discard_lowest", "fuse_heads", "grid_shape", "layer_maps",
           "make_explainer", "overlay", "rollout", "token_relevance"]

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention, head_fusion: str = "mean"):
    """[..., heads, T, T] -> [..., T, T]."""
    if head_fusion == "mean":
        return jnp.mean(attention, axis=-3)
    if head_fusion == "max":
        return jnp.max(attention, axis=-3)
    if head_fusion == "min":
        return jnp.min(attention, axis=-3)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_lowest(fused, discard_ratio: float):
    """Zero the lowest ``floor(discard_ratio * T * T)`` entries of each example's [T, T]
    matrix (a batch [B, T, T]; ties broken by position, as a stable sort)."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    batch, t, _ = fused.shape
    k = int(discard_ratio * t * t)
    if k == 0:
        return fused
    flat = fused.reshape(batch, t * t)
    lowest = jnp.argsort(flat, axis=-1, stable=True)[:, :k]
    keep = jnp.ones_like(flat, dtype=bool).at[jnp.arange(batch)[:, None], lowest].set(False)
    return jnp.where(keep, flat, 0).reshape(batch, t, t)


def rollout(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Attention rollout of per-layer attentions [L, B, heads, T, T] (or a sequence of
    L arrays [B, heads, T, T]), first layer first -> [B, T, T]."""
    joint = None
    for attention in attentions:
        a = fuse_heads(jnp.asarray(attention, jnp.float32), head_fusion)
        a = discard_lowest(a, discard_ratio)
        a = a + jnp.eye(a.shape[-1], dtype=a.dtype)
        a = a / jnp.sum(a, axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    if joint is None:
        raise ValueError("rollout needs the attention of at least one layer")
    return joint


def token_relevance(matrix, num_prefix_tokens: int):
    """[B, T, T] (a rollout or one layer's fused attention) -> [B, N] over the patch
    tokens: the CLS row (``num_prefix_tokens=1``) or the mean row (GAP, no prefix)."""
    if num_prefix_tokens:
        return matrix[:, 0, num_prefix_tokens:]
    return jnp.mean(matrix, axis=1)


def grid_shape(num_patches: int, image_hw: Sequence[int]) -> tuple[int, int]:
    """The (gh, gw) patch grid of `num_patches` tokens for images of (H, W): the grid has
    the image's aspect ratio (any patch size or hybrid stride)."""
    h, w = image_hw
    gh = round(math.sqrt(num_patches * h / w))
    if gh < 1 or num_patches % gh:
        raise ValueError(f"{num_patches} patch tokens do not form a grid with the aspect of a {h}x{w} image")
    return gh, num_patches // gh


def attention_stack(intermediates) -> jax.Array:
    """The model's "attention_weights_{i}" intermediates, stacked [L, B, heads, T, T]."""
    n = sum(1 for k in intermediates if k.startswith("attention_weights_"))
    if n == 0:
        raise ValueError("no attention weights: apply the ViT with return_attention_weights=True")
    return jnp.stack([intermediates[f"attention_weights_{i}"] for i in range(n)])


def layer_maps(attentions, num_prefix_tokens: int, head_fusion: str = "mean"):
    """Per-layer maps [L, B, N]: each layer's fused attention read like the rollout."""
    return jnp.stack([token_relevance(fuse_heads(a, head_fusion), num_prefix_tokens) for a in attentions])


def make_explainer(model, *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> Callable:
    """A jitted ``(variables, images) -> dict`` for a `jaxvision.models.ViT`:
    ``logits`` [B, classes], ``rollout`` [B, gh, gw] and ``layers`` [L, B, gh, gw] (the
    per-layer attention maps), both over the patch grid, and ``attention`` [L, B, heads,
    T, T]. Evaluation mode (no dropout, every token kept)."""
    fuse_heads(jnp.zeros((1, 1, 1)), head_fusion)  # bad names fail here, not inside jit
    discard_lowest(jnp.zeros((1, 1, 1)), discard_ratio)
    prefix = 1 if model.pool == "cls" else 0

    @jax.jit
    def explain(variables, images):
        logits, inter = model.apply(variables, images, train=False, return_attention_weights=True)
        attentions = attention_stack(inter)
        n = attentions.shape[-1] - prefix
        gh, gw = grid_shape(n, images.shape[1:3])
        joint = rollout(attentions, head_fusion, discard_ratio)
        maps = token_relevance(joint, prefix).reshape(-1, gh, gw)
        layers = layer_maps(attentions, prefix, head_fusion).reshape(attentions.shape[0], -1, gh, gw)
        return {"logits": logits, "rollout": maps, "layers": layers, "attention": attentions}

    return explain


def overlay(image, heat, *, alpha: float = 0.5, value_range=(-1.0, 1.0), cmap: str = "jet") -> np.ndarray:
    """An RGB uint8 [H, W, 3] picture: `image` [H, W, C] (in `value_range`) under the
    coloured map `heat` [gh, gw], stretched bilinearly to the image and scaled to [0, 1]
    per map (a rollout's scale is not comparable across images)."""
    import matplotlib

    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    lo, hi = value_range
    base = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    if base.ndim == 2 or base.shape[-1] == 1:
        base = np.repeat(base.reshape(h, w, 1), 3, axis=-1)
    heat = np.asarray(jax.image.resize(jnp.asarray(heat, jnp.float32), (h, w), "bilinear"))
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    colour = matplotlib.colormaps[cmap](heat)[..., :3]
    return np.round(255 * ((1 - alpha) * base[..., :3] + alpha * colour)).astype(np.uint8)
