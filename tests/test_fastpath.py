"""The fast path gives the reference path's results: bf16 compute, scanned and
rematerialised encoder blocks, several steps per dispatch, micro-batched steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import ViT
from jaxvision.models.vit_layout import stack_encoder_blocks, unstack_encoder_blocks
from jaxvision.train.grad import accumulated_value_and_grad
from jaxvision.train.multistep import multi_step, stack_batches

from helpers import as_jnp, assert_tree_equal, synthetic_batch, tiny_task

SMALL = dict(variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=7)


def images(n=4, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, 28, 28, 1), minval=-1.0, maxval=1.0)


def tree_max_diff(a, b):
    """Largest absolute difference of two trees of the same structure (checked first)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def small_params():
    model = ViT(num_classes=10, head_zero_init=False, **SMALL)
    return jax.jit(model.init)(jax.random.key(0), images())["params"]


def test_scan_layers_equals_unrolled_after_conversion(small_params):
    unrolled = ViT(num_classes=10, head_zero_init=False, **SMALL)
    scanned = ViT(num_classes=10, head_zero_init=False, scan_layers=True, **SMALL)
    params = small_params
    stacked = stack_encoder_blocks(params)
    # The stacked layout is exactly the one the scanned model initialises.
    own = jax.eval_shape(scanned.init, jax.random.key(0), images())["params"]
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(own)
    assert jax.tree_util.tree_map(jnp.shape, stacked) == jax.tree_util.tree_map(jnp.shape, own)
    assert stacked["Transformer"]["encoderblock"]["MlpBlock_3"]["Dense_0"]["kernel"].shape == (2, 16, 32)
    assert "encoderblock_0" not in stacked["Transformer"]
    assert_tree_equal(unstack_encoder_blocks(stacked), params)  # exact, both ways
    assert_tree_equal(stack_encoder_blocks(unstack_encoder_blocks(stacked)), stacked)

    apply = lambda model: jax.jit(lambda v, x: model.apply(v, x, return_attention_weights=True))  # noqa: E731
    ref, ref_inter = apply(unrolled)({"params": params}, images())
    out, inter = apply(scanned)({"params": stacked}, images())
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for key in ("encoder_block_1", "attention_weights_1", "pre_logits"):
        np.testing.assert_allclose(inter[key], ref_inter[key], atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_gradients(scan, small_params):
    kw = dict(num_classes=10, head_zero_init=False, scan_layers=scan, stochastic_depth=0.2, **SMALL)
    plain, remat = ViT(**kw), ViT(remat=True, **kw)
    params = stack_encoder_blocks(small_params) if scan else small_params

    def grads(model):
        def loss(p):
            logits, _ = model.apply({"params": p}, images(), train=True, rngs={"dropout": jax.random.key(5)})
            return jnp.mean(logits ** 2)
        return jax.jit(jax.grad(loss))(params)

    assert tree_max_diff(grads(plain), grads(remat)) < 1e-5


@pytest.fixture(scope="module")
def tiny():
    """(task, initial state, its jitted single step): compiled once for the tests below."""
    task = tiny_task(depth=2)
    return task, jax.jit(task.init)(jax.random.PRNGKey(0)), jax.jit(task.train_step)


def test_scanned_training_state_converts_both_ways(tiny):
    """A checkpoint (params and Adam moments) of either form continues training in the other."""
    batch = as_jnp(synthetic_batch(0, batch_size=8))
    _, state, step = tiny
    scanned = tiny_task(depth=2, scan_layers=True)
    ref, ref_metrics = step(state, batch)
    out, metrics = jax.jit(scanned.train_step)(stack_encoder_blocks(state), batch)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(out.opt_state)[0]]
    assert any("'encoderblock'" in p for p in paths)  # the Adam moments are stacked too
    assert tree_max_diff(unstack_encoder_blocks(out), ref) < 1e-5
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)


def test_several_steps_per_dispatch_equal_single_steps(tiny):
    task, state, step = tiny
    batches = [as_jnp(synthetic_batch(s, batch_size=8)) for s in range(3)]
    single, losses = state, []
    for b in batches:
        single, m = step(single, b)
        losses.append(m["loss"])
    multi, metrics = jax.jit(multi_step(task.train_step, 3))(state, stack_batches(batches))
    assert int(multi.step) == 3
    assert tree_max_diff(multi.params, single.params) < 1e-6
    np.testing.assert_allclose(metrics["loss"], np.stack(losses), rtol=1e-6)
    with pytest.raises(ValueError, match="leading axis of size 3"):
        multi_step(task.train_step, 3)(state, stack_batches(batches[:2]))


def test_micro_batches_see_their_own_index():
    seen = []

    def loss_fn(params, micro, index):
        seen.append(index)
        return jnp.sum(params * micro["x"]) + 0.0 * index, {"index": index.astype(jnp.float32)}

    batch = {"x": jnp.ones((8, 3))}
    (loss, aux), grads = accumulated_value_and_grad(loss_fn, jnp.ones(3), batch, 4, with_index=True)
    # mean over the pieces of each piece's index: (0 + 1 + 2 + 3) / 4
    assert float(aux["index"]) == pytest.approx(1.5)
    np.testing.assert_allclose(grads, np.full(3, 2.0))
    (_, aux), _ = accumulated_value_and_grad(loss_fn, jnp.ones(3), batch, 1, with_index=True)
    assert float(aux["index"]) == 0.0


def test_prefetch_keeps_order_and_raises_errors_on_their_own_step():
    from jaxvision.train.prefetch import prefetch

    put_calls = []

    def reader():
        for i in range(4):
            yield i
        raise KeyboardInterrupt("crash before batch 4")

    def put(i):
        put_calls.append(i)
        return i * 10

    it = prefetch(reader(), put, size=2)
    assert next(it) == 0
    assert put_calls == [0, 1, 2]  # batches 1 and 2 are already on their way
    assert [next(it) for _ in range(3)] == [10, 20, 30]
    with pytest.raises(KeyboardInterrupt, match="batch 4"):
        next(it)  # raised when batch 4 is asked for, not while batch 2 was being consumed
    assert list(prefetch(iter(range(3)), size=0)) == [0, 1, 2]


def test_pipeline_with_its_own_threads_gives_the_same_batches(tfds_data_dir):
    from jaxvision import data

    def first(threads):
        it = data.train_iterator("fashion_mnist", global_batch_size=32, seed=3, data_dir=tfds_data_dir,
                                 augment="flip", threads=threads)
        return [next(it) for _ in range(2)]

    for a, b in zip(first(None), first(1)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
