"""ViT options for small datasets: conv stem, shifted patch tokenization, locality attention,
patch dropout.

Each is checked against an independent computation: XLA's own convolution, and NumPy
versions of the formulas in Xiao et al. 2021, Lee et al. 2021 and Liu et al. 2022.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import ViT
from jaxvision.models.stems import StridedConv3x3
from jaxvision.models.transformer import MultiHeadDotProductAttention, Transformer

TINY = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4, pool="gap")


@pytest.mark.parametrize("size, channels", [(28, 1), (7, 3), (5, 2)])
def test_strided_conv_equals_xla_convolution(size, channels):
    x = jax.random.normal(jax.random.key(1), (2, size, size, channels))
    ours = StridedConv3x3(8)
    variables = ours.init(jax.random.key(0), x)
    reference = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).apply(variables, x)
    np.testing.assert_allclose(ours.apply(variables, x), reference, atol=1e-5)
    # and its gradient, the reason it exists (XLA's conv gradient is the slow part on CPU)
    grad = lambda m: jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(variables, x)  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(nn.Conv(8, (3, 3), strides=(2, 2),
                                                                             padding=((1, 1), (1, 1)))))):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _numpy_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_shifted_patch_tokenization_matches_numpy():
    model = ViT(num_classes=0, stem="spt", **TINY)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    _, inter = model.apply(variables, x)

    def shift(img, dy, dx):  # out[y, x] = img[y - dy, x - dx], zeros outside
        out = np.zeros_like(img)
        h, w = img.shape[1:3]
        out[:, max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
            img[:, max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)]
        return out

    stacked = np.concatenate([x] + [shift(x, dy, dx) for dy, dx in ((-2, -2), (-2, 2), (2, -2), (2, 2))], -1)
    patches = np.stack([stacked[:, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].reshape(2, -1)
                        for i in range(2) for j in range(2)], axis=1)  # [B, 4 patches, 4*4*5]
    p = variables["params"]
    normed = _numpy_layer_norm(patches, np.asarray(p["spt_norm"]["scale"]), np.asarray(p["spt_norm"]["bias"]))
    expected = normed @ np.asarray(p["embedding"]["kernel"]) + np.asarray(p["embedding"]["bias"])
    np.testing.assert_allclose(inter["patch_embeddings"], expected, atol=1e-5)


def test_locality_attention_matches_numpy():
    width, heads, tokens = 16, 2, 5
    module = MultiHeadDotProductAttention(num_heads=heads, locality=True)
    x = np.random.default_rng(1).normal(size=(2, tokens, width)).astype(np.float32)
    variables = module.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables["params"])
    assert params["temperature"] == pytest.approx(np.sqrt(width // heads))  # starts as plain attention
    params["temperature"] = np.float32(1.7)
    out, weights = module.apply({"params": params}, x, return_weights=True)

    proj = lambda name: np.einsum("btd,dhk->bthk", x, params[name]["kernel"]) + params[name]["bias"]  # noqa: E731
    q, k, v = proj("query"), proj("key"), proj("value")
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 1.7
    logits[:, :, np.arange(tokens), np.arange(tokens)] = -np.inf  # no token attends to itself
    expected_weights = np.exp(logits - logits.max(-1, keepdims=True))
    expected_weights /= expected_weights.sum(-1, keepdims=True)
    mixed = np.einsum("bhqk,bkhd->bqhd", expected_weights, v)
    expected = np.einsum("bqhd,hdo->bqo", mixed, params["out"]["kernel"]) + params["out"]["bias"]
    np.testing.assert_allclose(weights, expected_weights, atol=1e-5)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_conv_stem_layout_and_token_grid():
    model = ViT(num_classes=10, stem="conv", **TINY)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    p = variables["params"]
    # log2(4) = 2 stride-2 convs, channels doubling up to width, then a 1x1 embedding
    assert p["stem_conv_0"]["kernel"].shape == (3, 3, 1, 16)
    assert p["stem_conv_1"]["kernel"].shape == (3, 3, 16, 32)
    assert p["embedding"]["kernel"].shape == (1, 1, 32, 32)
    _, inter = model.apply(variables, jnp.zeros((3, 28, 28, 1)))
    assert inter["patch_embeddings"].shape == (3, 49, 32)


def test_stem_errors_are_clear():
    x = jnp.zeros((1, 24, 24, 1))
    with pytest.raises(ValueError, match="power-of-two patch"):
        ViT(num_classes=2, stem="conv", **dict(TINY, patch_size=6)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="stem must be one of"):
        ViT(num_classes=2, stem="convolutional", **TINY).init(jax.random.key(0), x)


@pytest.mark.parametrize("rate, prefix", [(0.5, 0), (0.25, 1)])
def test_patch_dropout_keeps_a_random_subset_of_position_embedded_tokens(rate, prefix):
    # depth 0: the output is the final LayerNorm of exactly the tokens that were kept.
    model = Transformer(depth=0, mlp_dim=8, num_heads=1, patch_dropout=rate, num_prefix_tokens=prefix)
    n, batch = 16, 64
    x = np.random.default_rng(0).normal(size=(batch, prefix + n, 4)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    pos = np.asarray(variables["params"]["posembed_input"]["pos_embedding"])
    # init gives pos ~ N(0, 0.02): make it large, so that a token in the wrong place shows
    variables = {"params": {**variables["params"], "posembed_input": {"pos_embedding": pos * 100}}}
    candidates = _numpy_layer_norm(x + pos * 100, 1.0, 0.0)
    out, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    keep = round(n * (1 - rate))
    assert out.shape == (batch, prefix + keep, 4)
    out = np.asarray(out)
    kept = np.zeros((batch, n), int)
    for b in range(batch):
        np.testing.assert_allclose(out[b, :prefix], candidates[b, :prefix], atol=1e-5)  # prefix stays
        dist = np.abs(out[b, prefix:, None] - candidates[b, None, prefix:]).max(-1)  # [keep, n]
        match = dist.argmin(1)
        assert np.all(dist[np.arange(keep), match] < 1e-4) and len(set(match)) == keep
        kept[b, match] = 1
    # a fresh subset per example, each token equally likely: frequency keep/n (binomial 5 sigma)
    assert len({tuple(row) for row in kept}) > batch // 2
    p = keep / n
    assert np.all(np.abs(kept.mean(0) - p) < 5 * np.sqrt(p * (1 - p) / batch))
    # evaluation sees every token
    full, _ = model.apply(variables, x, train=False)
    np.testing.assert_allclose(full, candidates, atol=1e-5)


def test_patch_dropout_vit_trains_on_fewer_tokens_and_evaluates_on_all():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    dropped = ViT(num_classes=3, patch_dropout=0.75, **TINY)
    variables = dropped.init(jax.random.key(0), x)
    _, inter = dropped.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert inter["encoder_block_0"].shape == (2, 4, 32)  # 16 patches, a quarter kept
    evaluated, _ = dropped.apply(variables, x)
    reference, _ = ViT(num_classes=3, **TINY).apply(variables, x)
    np.testing.assert_array_equal(evaluated, reference)
    with pytest.raises(ValueError, match="patch_dropout must be in"):
        ViT(num_classes=3, patch_dropout=1.0, **TINY).init(jax.random.key(0), x)
