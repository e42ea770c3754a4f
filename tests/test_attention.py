"""jaxvision.attention against a NumPy reference, on every implementation this backend has."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.attention import available_implementations, dot_product_attention

IMPLEMENTATIONS = available_implementations()
HAS_CUDNN = "cudnn" in IMPLEMENTATIONS


def reference_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V in float64; returns (out [B,Tq,H,Dv], weights [B,H,Tq,Tk])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v), weights


def make_qkv(batch=2, q_len=5, kv_len=5, heads=2, head_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_len, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv_len, heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv_len, heads, head_dim)).astype(np.float32)
    return q, k, v


def padding_mask(kv_lengths, kv_len):
    """[B, 1, 1, kv_len] mask: True for the first kv_lengths[b] keys."""
    lengths = np.asarray(kv_lengths)
    return (np.arange(kv_len)[None, :] < lengths[:, None])[:, None, None, :]


def random_mask(batch, heads, q_len, kv_len, seed=1):
    mask = np.random.default_rng(seed).random((batch, heads, q_len, kv_len)) < 0.6
    mask[..., 0] = True  # every query attends to at least one key
    return mask


def tolerance(implementation):
    # cuDNN runs in bf16 only: compare loosely; the XLA path in float32 must be tight.
    return 1e-5 if implementation == "xla" else 3e-2


CASES = {
    "self": dict(q_len=5, kv_len=5, mask=None),
    "cross_lengths": dict(q_len=4, kv_len=9, mask=None),
    "odd_197": dict(q_len=197, kv_len=197, mask=None),
    "random_mask": dict(q_len=6, kv_len=7, mask="random"),
    "padding_mask": dict(q_len=7, kv_len=7, mask="padding"),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_reference(implementation, case):
    spec = CASES[case]
    q, k, v = make_qkv(q_len=spec["q_len"], kv_len=spec["kv_len"])
    mask = None
    if spec["mask"] == "random":
        mask = random_mask(2, 2, spec["q_len"], spec["kv_len"])
    elif spec["mask"] == "padding":
        mask = padding_mask([4, 7], spec["kv_len"])
    dtype = jnp.float32 if implementation == "xla" else jnp.bfloat16
    if implementation != "xla":
        # Reference on the bf16-rounded inputs, so only the kernel's arithmetic differs.
        q, k, v = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)) for x in (q, k, v))
    out = dot_product_attention(q, k, v, mask, implementation=implementation, dtype=dtype)
    expected, _ = reference_attention(q, k, v, mask)
    assert out.shape == expected.shape
    assert out.dtype == dtype
    tol = tolerance(implementation)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("masked", [False, True])
def test_weights_match_numpy_and_rows_sum_to_one(masked):
    q, k, v = make_qkv(q_len=4, kv_len=6)
    mask = padding_mask([3, 6], 6) if masked else None
    out, weights = dot_product_attention(q, k, v, mask, return_weights=True)
    expected_out, expected_weights = reference_attention(q, k, v, mask)
    assert weights.shape == (2, 2, 4, 6)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, expected_out, atol=1e-5)
    if masked:
        assert np.all(np.asarray(weights)[0, :, :, 3:] == 0.0)


def test_auto_selection_matches_xla_and_jits():
    q, k, v = make_qkv()
    fn = jax.jit(lambda q, k, v: dot_product_attention(q, k, v))
    np.testing.assert_allclose(
        fn(q, k, v), dot_product_attention(q, k, v, implementation="xla"), atol=1e-6
    )
    grads = jax.grad(lambda q: dot_product_attention(q, k, v).sum())(jnp.asarray(q))
    assert np.all(np.isfinite(grads))


def test_bf16_dtype_xla_close_to_float32():
    q, k, v = make_qkv()
    out = dot_product_attention(q, k, v, implementation="xla", dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    expected, _ = reference_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=5e-2, rtol=5e-2)


def test_attention_dropout():
    q, k, v = make_qkv()
    plain = dot_product_attention(q, k, v)
    key = jax.random.key(0)
    a = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=key)
    b = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=key)
    c = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="dropout_rng"):
        dot_product_attention(q, k, v, dropout_rate=0.5)


def test_bad_inputs_raise():
    q, k, v = make_qkv(q_len=5, kv_len=6)
    with pytest.raises(ValueError, match="rank 4"):
        dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="batch"):
        dot_product_attention(q[:1], k, v)
    with pytest.raises(ValueError, match="heads"):
        dot_product_attention(q[:, :, :1], k, v)
    with pytest.raises(ValueError, match="head_dim"):
        dot_product_attention(q[..., :8], k, v)
    with pytest.raises(ValueError, match="lengths differ"):
        dot_product_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="boolean"):
        dot_product_attention(q, k, v, np.zeros((2, 2, 5, 6), np.float32))
    with pytest.raises(ValueError, match="broadcastable"):
        dot_product_attention(q, k, v, np.ones((2, 2, 5, 5), bool))
    with pytest.raises(ValueError, match="unknown attention implementation"):
        dot_product_attention(q, k, v, implementation="flash")


def test_cudnn_refusals_explain_and_suggest_xla():
    q, k, v = make_qkv()
    # Weights never exist in the fused kernel, so this is refused on every backend.
    with pytest.raises(ValueError, match='implementation="xla"'):
        dot_product_attention(
            q, k, v, implementation="cudnn", return_weights=True, dtype=jnp.bfloat16
        )
    if not HAS_CUDNN:
        with pytest.raises(ValueError, match="NVIDIA GPU"):
            dot_product_attention(q, k, v, implementation="cudnn", dtype=jnp.bfloat16)
    else:
        with pytest.raises(ValueError, match="bfloat16/float16"):
            dot_product_attention(q, k, v, implementation="cudnn")


@pytest.mark.parametrize(
    "q_len, kv_len, mask_kind",
    [(197, 197, None), (5, 9, None), (7, 7, "padding"), (6, 7, "random"), (6, 6, None)],
)
def test_cudnn_padding_logic_with_xla_stand_in(monkeypatch, q_len, kv_len, mask_kind):
    """The odd-length padding around the cuDNN call, checked on any backend.

    jax.nn.dot_product_attention's XLA path honours the same mask and sequence-length
    arguments, so it stands in for the fused kernel; only our pad/mask/slice logic is tested.
    """
    import jaxvision.attention as attention

    real = jax.nn.dot_product_attention
    calls = []

    def stand_in(q, k, v, **kwargs):
        assert kwargs.pop("implementation") == "cudnn"
        calls.append((q.shape[1], k.shape[1]))
        return real(q, k, v, implementation="xla", **kwargs)

    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", stand_in)
    q, k, v = make_qkv(q_len=q_len, kv_len=kv_len)
    mask = None
    if mask_kind == "padding":
        mask = padding_mask([3, 7], kv_len)
    elif mask_kind == "random":
        mask = random_mask(2, 2, q_len, kv_len)
    out = attention._cudnn_attention(*(jnp.asarray(x) for x in (q, k, v)), mask)
    expected, _ = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    padded_q, padded_kv = calls[0]
    assert padded_q % 2 == 0 and padded_kv % 2 == 0  # odd lengths were padded
    if q_len % 2 == 0:
        assert padded_q == q_len  # even lengths (196 ran on cuDNN) stay unpadded
