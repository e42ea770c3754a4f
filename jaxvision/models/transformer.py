"""The ViT's transformer encoder, with the official parameter layout.

Position embeddings, optional patch dropout, ``depth`` pre-norm blocks (self-attention
through `jaxvision.attention.dot_product_attention`, GELU MLP, dropout, stochastic
depth), unrolled or scanned (``nn.scan``, stacked parameters), optionally
rematerialised, and the final LayerNorm. `jaxvision.models.vit.ViT` puts a stem before
it and a head after it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.attention import dot_product_attention

__all__ = ["AddPositionEmbs", "Encoder1DBlock", "MlpBlock", "MultiHeadDotProductAttention", "Transformer"]


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
    def __call__(self, x, *, train: bool = False, return_attention_weights: bool = False,
                 keep_indices=None):
        """x [B, T, D] -> (encoded [B, T', D], intermediates).

        keep_indices: optional [B, K] int indices of the patch tokens (after the
        ``num_prefix_tokens`` prefix, numbered from 0) that the blocks see; the others are
        dropped after the position embeddings, so each kept token keeps its own. The masked
        autoencoder encodes only its visible patches this way. None: every token.
        """
        intermediates: dict[str, jax.Array] = {}
        x = AddPositionEmbs(param_dtype=self.param_dtype, name="posembed_input")(x)
        if keep_indices is not None:
            x = self._keep_patches(x, keep_indices)
        if train and self.patch_dropout > 0.0:
            x = self._drop_patches(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        if self.scan_layers:
            # One block traced and compiled once, its parameters stacked along a leading
            # depth axis under "encoderblock" (see vit_layout.stack_encoder_blocks). Dropout masks
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

    def _keep_patches(self, x, keep_indices):
        """The prefix tokens and the patch tokens at `keep_indices` [B, K], in that order."""
        prefix, patches = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        patches = jnp.take_along_axis(patches, keep_indices[:, :, None], axis=1)
        return jnp.concatenate([prefix, patches], axis=1)

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
