"""ViT: parameter layout and counts, intermediates, dtypes, regularisers, errors, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxvision.attention import available_implementations
from jaxvision.models import VARIANTS, ViT, parse_variant

TINY = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4)


def images(batch=2, size=28, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)


def abstract_params(model, shape):
    """Parameter shapes without allocating (jax.eval_shape)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return variables["params"]


@pytest.mark.parametrize(
    "variant, expected",
    [("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656), ("L/16", 304_326_632)],
)
def test_parameter_count_goldens(variant, expected):
    params = abstract_params(ViT(num_classes=1000, variant=variant), (1, 224, 224, 3))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == expected


def test_parse_variant():
    assert parse_variant("B/16") == dict(
        width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16)
    )
    assert parse_variant("Ti/4")["patch_size"] == (4, 4)
    assert parse_variant("S/7")["width"] == 384
    assert parse_variant("B/16x8")["patch_size"] == (16, 8)
    assert parse_variant("H/14")["depth"] == 32
    assert set(VARIANTS) == {"Ti", "S", "B", "L", "H"}
    for bad in ["X/16", "B", "B16", "b/16", "B/", 16]:
        with pytest.raises(ValueError, match="'B/16'") as info:
            parse_variant(bad)
        assert "Ti" in str(info.value)


def test_official_parameter_names_and_shapes():
    params = abstract_params(ViT(num_classes=1000, variant="B/16"), (1, 224, 224, 3))
    flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
    block = "Transformer/encoderblock_11"
    expected = {
        "cls": (1, 1, 768),
        "embedding/kernel": (16, 16, 3, 768),
        "embedding/bias": (768,),
        "Transformer/posembed_input/pos_embedding": (1, 197, 768),
        f"{block}/LayerNorm_0/scale": (768,),
        f"{block}/MultiHeadDotProductAttention_1/query/kernel": (768, 12, 64),
        f"{block}/MultiHeadDotProductAttention_1/key/bias": (12, 64),
        f"{block}/MultiHeadDotProductAttention_1/value/kernel": (768, 12, 64),
        f"{block}/MultiHeadDotProductAttention_1/out/kernel": (12, 64, 768),
        f"{block}/MultiHeadDotProductAttention_1/out/bias": (768,),
        f"{block}/LayerNorm_2/bias": (768,),
        f"{block}/MlpBlock_3/Dense_0/kernel": (768, 3072),
        f"{block}/MlpBlock_3/Dense_1/kernel": (3072, 768),
        "Transformer/encoder_norm/scale": (768,),
        "head/kernel": (768, 1000),
        "head/bias": (1000,),
    }
    for name, shape in expected.items():
        assert flat[name] == shape, name
    # Only official names: 4 top-level entries, 12 blocks + posembed + encoder_norm.
    assert set(params) == {"cls", "embedding", "Transformer", "head"}
    assert len(params["Transformer"]) == 14


def test_init_values_and_representation_layer():
    model = ViT(num_classes=10, representation_size=24, **TINY)
    params = model.init(jax.random.key(0), images())["params"]
    assert np.all(params["head"]["kernel"] == 0) and np.all(params["cls"] == 0)
    assert params["pre_logits"]["kernel"].shape == (32, 24)
    pos = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
    assert 0.01 < pos.std() < 0.03


def test_intermediates_keys_and_shapes():
    model = ViT(num_classes=10, **TINY)
    x = images()
    variables = model.init(jax.random.key(0), x)
    logits, inter = model.apply(variables, x, return_attention_weights=True)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert inter["patch_embeddings"].shape == (2, 49, 32)
    for i in range(2):
        assert inter[f"encoder_block_{i}"].shape == (2, 50, 32)
        weights = inter[f"attention_weights_{i}"]
        assert weights.shape == (2, 2, 50, 50)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)
    assert inter["encoded"].shape == (2, 50, 32)
    assert inter["pre_logits"].shape == (2, 32)
    np.testing.assert_allclose(inter["pre_logits"], inter["encoded"][:, 0], atol=1e-6)
    _, plain = model.apply(variables, x)
    assert not any(k.startswith("attention_weights") for k in plain)
    np.testing.assert_allclose(plain["encoded"], inter["encoded"], atol=1e-6)


def test_cls_vs_gap_pos_embedding_and_pooling():
    cls_params = abstract_params(ViT(num_classes=10, pool="cls", **TINY), (1, 28, 28, 1))
    gap_params = abstract_params(ViT(num_classes=10, pool="gap", **TINY), (1, 28, 28, 1))
    pos = lambda p: p["Transformer"]["posembed_input"]["pos_embedding"].shape  # noqa: E731
    assert pos(cls_params) == (1, 50, 32)
    assert pos(gap_params) == (1, 49, 32)
    assert "cls" in cls_params and "cls" not in gap_params

    model = ViT(num_classes=10, pool="gap", **TINY)
    x = images()
    _, inter = model.apply(model.init(jax.random.key(0), x), x)
    assert inter["encoded"].shape == (2, 49, 32)
    np.testing.assert_allclose(inter["pre_logits"], inter["encoded"].mean(1), atol=1e-6)


def test_non_square_patches():
    model = ViT(num_classes=3, variant="Ti/4x7", width=16, depth=1, num_heads=2, mlp_dim=32)
    params = abstract_params(model, (1, 28, 28, 3))
    assert params["embedding"]["kernel"].shape == (4, 7, 3, 16)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 7 * 4 + 1, 16)


def test_bf16_compute_keeps_f32_params_and_close_logits():
    x = images()
    f32 = ViT(num_classes=10, head_zero_init=False, **TINY)
    bf16 = ViT(num_classes=10, head_zero_init=False, dtype=jnp.bfloat16, **TINY)
    variables = f32.init(jax.random.key(0), x)
    bf16_variables = bf16.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_variables))
    logits32, _ = f32.apply(variables, x)
    # jit: one compile instead of eager per-op compiles for the new dtype (faster on CPU).
    logits16, inter16 = jax.jit(bf16.apply)(variables, x)
    assert inter16["encoded"].dtype == jnp.bfloat16
    assert logits16.dtype == jnp.float32
    scale = float(np.abs(logits32).max())
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


@pytest.mark.parametrize(
    "rates",
    [dict(dropout=0.1), dict(attention_dropout=0.2), dict(stochastic_depth=0.5)],
    ids=["dropout", "attention_dropout", "stochastic_depth"],
)
def test_regularisers_only_act_in_training(rates):
    x = images()
    base = ViT(num_classes=10, head_zero_init=False, **TINY)
    model = ViT(num_classes=10, head_zero_init=False, **TINY, **rates)
    variables = base.init(jax.random.key(0), x)
    reference, _ = base.apply(variables, x)
    evaluated, _ = model.apply(variables, x, train=False)
    np.testing.assert_allclose(evaluated, reference, atol=1e-6)
    rng_a = {"dropout": jax.random.key(1)}
    trained_a, _ = model.apply(variables, x, train=True, rngs=rng_a)
    trained_a2, _ = model.apply(variables, x, train=True, rngs=rng_a)
    trained_b, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(trained_a, reference, atol=1e-4)
    np.testing.assert_array_equal(trained_a, trained_a2)
    assert not np.allclose(trained_a, trained_b, atol=1e-4)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)  # training with a rate > 0 needs an rng


def test_errors_are_clear():
    x = images(size=30)
    model = ViT(num_classes=10, **TINY)
    message = r"height 30 is not divisible by the patch height 4.*28 or 32"
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unknown ViT variant"):
        ViT(num_classes=10, variant="Q/16").init(jax.random.key(0), images())
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ViT(num_classes=10, **dict(TINY, num_heads=3)).init(jax.random.key(0), images())
    with pytest.raises(ValueError, match="needs explicit depth"):
        ViT(num_classes=10, variant=None, width=32, mlp_dim=64, num_heads=2, patch_size=4).init(
            jax.random.key(0), images()
        )
    with pytest.raises(ValueError, match="pool"):
        ViT(num_classes=10, pool="max", **TINY).init(jax.random.key(0), images())
    variables = model.init(jax.random.key(0), images())
    with pytest.raises(ValueError, match="resample the position embeddings"):
        model.apply(variables, images(size=32))


@pytest.mark.skipif("cudnn" in available_implementations(), reason="CPU-only refusal")
def test_cudnn_attention_refused_on_cpu():
    model = ViT(num_classes=10, attention_implementation="cudnn", dtype=jnp.bfloat16, **TINY)
    with pytest.raises(ValueError, match='implementation="xla"'):
        model.init(jax.random.key(0), images())


def test_tiny_vit_overfits_small_batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (16, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.permutation(np.arange(16) % 10))
    model = ViT(num_classes=10, **TINY)
    params = model.init(jax.random.key(0), x[:2])["params"]  # batch 2: shapes already compiled
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    def loss_fn(params):
        logits, _ = model.apply({"params": params}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, logits

    @jax.jit
    def train(params, opt_state):
        def step(carry, _):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), None, length=150)
        return params, losses

    params, losses = train(params, opt_state)
    final_loss, logits = loss_fn(params)
    assert losses[0] > 2.0
    assert final_loss < 0.05, f"loss {float(final_loss):.4f} after 150 steps"
    assert float(jnp.mean(jnp.argmax(logits, -1) == y)) == 1.0
