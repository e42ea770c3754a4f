"""Scaled dot-product attention as a pure function, with a portable and a fused backend.

Layout: ``q``, ``k``, ``v`` are ``[batch, length, heads, head_dim]`` (the layout Flax's
DenseGeneral projections produce, and the one ``jax.nn.dot_product_attention`` takes, so no
transposes are needed on either path). Key/value length may differ from the query length.

Backends
--------
``"xla"``
    Plain ``jnp.einsum`` + softmax. Logits and softmax are computed in float32 whatever the
    input dtype (bf16 logits lose too much precision in the exponent), and the attention
    weights can be returned or dropped out. Works on every backend.
``"cudnn"``
    ``jax.nn.dot_product_attention(..., implementation="cudnn")``: cuDNN's fused
    flash-attention kernel. NVIDIA GPUs only, bf16/fp16 only, head_dim a multiple of 8 and at
    most 256 (Hopper or later; 128 before). It never materialises the [q, kv] weight matrix,
    so it cannot return weights or apply attention dropout.
``None``
    The fastest valid one: ``"cudnn"`` when it can run these inputs, else ``"xla"``.
    (``jax.nn.dot_product_attention`` itself still picks XLA for ``None``, which is why we
    choose explicitly.)

Nothing here depends on Flax; models call this function from their attention modules.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["IMPLEMENTATIONS", "available_implementations", "dot_product_attention"]

IMPLEMENTATIONS = ("xla", "cudnn")

# cuDNN refused an odd token count (REFERENCE.md: 197 = CLS + 14x14 refused, 196 ran; JAX's own
# check rejects odd lengths whenever a bias/mask is present in training). Odd lengths are
# therefore padded up to a multiple of 64, the kernel's tile height: the padded rows fall into
# a tile the kernel computes anyway, so they cost almost nothing. Padded keys are excluded
# with cuDNN's own sequence-length (padding) mask, and padded query rows are sliced off.
_CUDNN_PAD_MULTIPLE = 64
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


@functools.lru_cache(maxsize=None)
def _cuda_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the default device when it is a CUDA GPU, else None.

    ROCm GPUs also report platform "gpu" but have no ``compute_capability`` and no cuDNN.
    """
    if jax.default_backend() != "gpu":
        return None
    device = jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    if not capability:
        return None
    try:
        major, minor = (int(part) for part in str(capability).split(".")[:2])
    except ValueError:
        return None
    return major, minor


def _cudnn_max_head_dim(capability: tuple[int, int]) -> int:
    # cuDNN flash attention handles head_dim up to 256 on Hopper (sm90) and later, 128 before.
    return 256 if capability >= (9, 0) else 128


def available_implementations() -> tuple[str, ...]:
    """Implementations that can run on the current default backend.

    ``"xla"`` always; ``"cudnn"`` additionally on CUDA GPUs (for bf16/fp16 inputs only).
    """
    if _cuda_compute_capability() is not None:
        return ("xla", "cudnn")
    return ("xla",)


def _cudnn_unsupported_reason(
    q: jax.Array, k: jax.Array, v: jax.Array, *, return_weights: bool, dropout: bool
) -> str | None:
    """Why cuDNN cannot run these inputs, or None when it can."""
    capability = _cuda_compute_capability()
    if capability is None:
        return f"it needs an NVIDIA GPU but the default backend is {jax.default_backend()!r}"
    if return_weights:
        return "the fused kernel never materialises the attention weights (return_weights=True)"
    if dropout:
        return "the fused kernel has no attention-weight dropout in jax.nn.dot_product_attention"
    if not any(q.dtype == d for d in _CUDNN_DTYPES):
        return f"it supports only bfloat16/float16 inputs, got {q.dtype} (pass dtype=jnp.bfloat16)"
    head_dim = q.shape[-1]
    max_head_dim = _cudnn_max_head_dim(capability)
    if head_dim % 8 != 0 or head_dim > max_head_dim:
        return (
            f"head_dim must be a multiple of 8 and at most {max_head_dim} on this GPU, "
            f"got {head_dim}"
        )
    if v.shape[-1] != head_dim:
        return f"query/key head_dim {head_dim} differs from value head_dim {v.shape[-1]}"
    return None


def _check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, length, heads, head_dim], got shape {x.shape}"
            )
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        raise ValueError(
            f"q, k, v batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if q.shape[2] != k.shape[2] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"q, k, v must have the same number of heads: q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head_dim differ: q {q.shape}, k {k.shape}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v lengths differ: k {k.shape}, v {v.shape}")
    if mask is not None:
        if mask.dtype != jnp.bool_:
            raise ValueError(
                f"mask must be boolean (True = attend), got dtype {mask.dtype}; "
                "convert an additive mask with `mask = additive_mask == 0`"
            )
        target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        ok = mask.ndim <= 4
        if ok:
            padded = (1,) * (4 - mask.ndim) + tuple(mask.shape)
            ok = all(m in (1, t) for m, t in zip(padded, target))
        if not ok:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} is not broadcastable to "
                f"[batch, heads, q_len, kv_len] = {target}"
            )


def _xla_attention(q, k, v, mask, *, dropout_rate, dropout_rng, out_dtype):
    """softmax(Q K^T / sqrt(d)) V with float32 logits/softmax; returns (out, weights)."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    # float32 accumulation even for bf16 inputs: exp() of bf16 logits loses precision.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)
    if mask is not None:
        # where(), not an additive bias: finfo.min + logit would overflow to -inf. A fully
        # masked row ends up with equal logits, i.e. uniform weights (as jax.nn does).
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    probs = weights
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype), weights


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _cudnn_attention(q, k, v, mask):
    """Fused cuDNN attention, padding odd lengths (see _CUDNN_PAD_MULTIPLE)."""
    batch, q_len, _, _ = q.shape
    kv_len = k.shape[1]
    q_pad = _round_up(q_len, _CUDNN_PAD_MULTIPLE) if q_len % 2 else q_len
    kv_pad = _round_up(kv_len, _CUDNN_PAD_MULTIPLE) if kv_len % 2 else kv_len
    if q_pad == q_len and kv_pad == kv_len:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")

    def pad_len(x, new_len):
        return jnp.pad(x, ((0, 0), (0, new_len - x.shape[1]), (0, 0), (0, 0)))

    q, k, v = pad_len(q, q_pad), pad_len(k, kv_pad), pad_len(v, kv_pad)
    if mask is None:
        # No bias tensor at all: cuDNN's own padding mask from the true lengths.
        seq_kwargs = dict(
            query_seq_lengths=jnp.full((batch,), q_len, jnp.int32),
            key_value_seq_lengths=jnp.full((batch,), kv_len, jnp.int32),
        )
    else:
        # A user mask becomes a bias inside cuDNN anyway; extend it rather than combining it
        # with the padding mask type: padded keys False, padded query rows True (they attend
        # to real keys, so no row is fully masked; they are sliced off below).
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
        mask = jnp.broadcast_to(mask, mask.shape[:2] + (mask.shape[2], kv_len))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, kv_pad - kv_len)),
                       constant_values=False)
        if mask.shape[2] != 1:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, q_pad - q_len), (0, 0)),
                           constant_values=True)
        seq_kwargs = {}
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn", **seq_kwargs)
    return out[:, :q_len]


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    implementation: str | None = None,
    return_weights: bool = False,
    dtype: Any = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
):
    """Multi-head scaled dot-product attention, ``softmax(Q K^T / sqrt(d_k)) V``.

    Args:
      q: queries, ``[batch, q_len, heads, head_dim]``.
      k: keys, ``[batch, kv_len, heads, head_dim]``.
      v: values, ``[batch, kv_len, heads, v_head_dim]``.
      mask: optional boolean mask broadcastable to ``[batch, heads, q_len, kv_len]``;
        True = attend. A query row with every key masked gets uniform weights.
      implementation: ``"xla"``, ``"cudnn"`` or None (fastest valid; see module docstring).
      return_weights: also return the attention weights ``[batch, heads, q_len, kv_len]``
        (float32, before dropout). Needs the XLA path; None selects it.
      dtype: cast q, k, v to this dtype first (None: their common dtype). The output has
        this dtype; logits and softmax are float32 on the XLA path regardless.
      dropout_rate: attention-weight dropout rate (XLA path only; None selects it when > 0).
      dropout_rng: PRNG key, required when ``dropout_rate > 0``.

    Returns:
      ``out`` of shape ``[batch, q_len, heads, v_head_dim]``, or ``(out, weights)`` when
      ``return_weights``.

    Raises:
      ValueError: on bad ranks/shapes/mask, unknown ``implementation``, or ``"cudnn"``
        requested where it cannot run.
    """
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; "
            f"expected one of {IMPLEMENTATIONS} or None (pick the fastest valid one)"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    use_dropout = dropout_rate > 0.0
    if use_dropout and dropout_rng is None:
        raise ValueError("dropout_rate > 0 needs a dropout_rng")

    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if mask is not None:
        mask = jnp.asarray(mask)
    _check_inputs(q, k, v, mask)
    out_dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(q, k, v)
    q, k, v = q.astype(out_dtype), k.astype(out_dtype), v.astype(out_dtype)

    if implementation is None:
        reason = _cudnn_unsupported_reason(
            q, k, v, return_weights=return_weights, dropout=use_dropout
        )
        implementation = "xla" if reason is not None else "cudnn"
    elif implementation == "cudnn":
        reason = _cudnn_unsupported_reason(
            q, k, v, return_weights=return_weights, dropout=use_dropout
        )
        if reason is not None:
            raise ValueError(
                f'implementation="cudnn" is not possible here: {reason}. '
                'Use implementation="xla" (works everywhere) or None (picks the fastest valid).'
            )

    if implementation == "cudnn":
        return _cudnn_attention(q, k, v, mask)

    out, weights = _xla_attention(
        q, k, v, mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng, out_dtype=out_dtype
    )
    if return_weights:
        return out, weights
    return out
