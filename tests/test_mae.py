"""Masked autoencoder: masking, targets and loss against NumPy, the encoder as a ViT,
visible-only encoding, bad ratios, reconstruction grids and exact resume on the loop."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import IMAGE_SHAPE, synthetic_data, tree_difference
from jaxvision import config as config_lib
from jaxvision.models.mae import MAE, MAEEncoder, num_visible, patchify, random_masking, unpatchify
from jaxvision.models.vit import ViT
from jaxvision.pretrained import load_pretrained, save_npz
from jaxvision.tasks import classification as cls
from jaxvision.tasks import mae as mae_task
from jaxvision.train import load_params, loop, optim

ENC = dict(variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=4)
SIZE = 16  # 16x16 images, 4x4 patches: 16 patches, 4 visible at ratio 0.75


def tiny_mae(pool="gap", mask_ratio=0.75, **kw):
    return MAE(encoder=MAEEncoder(num_classes=0, pool=pool, **ENC, **kw), mask_ratio=mask_ratio,
               decoder_width=8, decoder_depth=1, decoder_heads=2)


def images(batch=3, seed=0, size=SIZE):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 1)).astype(np.float32))


def _init(pool):
    model = tiny_mae(pool)
    # Jitted: one compilation instead of one per operation (the tests stay within their time budget).
    init = jax.jit(lambda x: model.init({"params": jax.random.PRNGKey(0), "mask": jax.random.PRNGKey(1)}, x))
    return model, init(images())["params"]


def forward(model, params, x, *, key=None, noise=None):
    """(pred, mask), jitted per model."""
    return _forward(model)(params, x, key if key is not None else jax.random.PRNGKey(0), noise)


_FORWARD = {}


def _forward(model):
    if model not in _FORWARD:
        _FORWARD[model] = jax.jit(lambda p, x, k, n: model.apply({"params": p}, x, noise=n, rngs={"mask": k}))
    return _FORWARD[model]


@pytest.fixture(scope="module")
def model_and_params():
    return _init("gap")


@pytest.fixture(scope="module", params=["gap", "cls"])
def any_pool(request, model_and_params):
    return model_and_params if request.param == "gap" else _init("cls")


def test_random_masking_keeps_the_smallest_noise_and_restores_the_order():
    noise = np.random.default_rng(0).uniform(size=(5, 49)).astype(np.float32)
    keep = num_visible(49, 0.75)
    assert keep == 12  # int(49 * 0.25), as in the paper
    keep_ids, mask, restore = map(np.asarray, random_masking(jnp.asarray(noise), keep))
    for b in range(5):
        expected = np.argsort(noise[b])[:keep]
        np.testing.assert_array_equal(keep_ids[b], expected)
        truth = np.ones(49, np.float32)
        truth[expected] = 0.0
        np.testing.assert_array_equal(mask[b], truth)
        # restore un-shuffles [kept..., removed...] back to image order
        shuffled = np.argsort(noise[b])
        np.testing.assert_array_equal(shuffled[restore[b]], np.arange(49))
    assert (mask.sum(1) == 49 - keep).all()
    # per example: different noise, different kept sets
    assert len({tuple(sorted(k)) for k in keep_ids}) == 5


def test_masks_are_drawn_per_example_and_per_key(model_and_params):
    model, params = model_and_params
    same = jnp.repeat(images(1), 4, axis=0)  # four identical images
    _, mask = forward(model, params, same, key=jax.random.PRNGKey(3))
    mask = np.asarray(mask)
    assert mask.shape == (4, 16) and (mask.sum(1) == 16 - 4).all()
    assert len({tuple(m) for m in mask}) == 4
    _, other = forward(model, params, same, key=jax.random.PRNGKey(4))
    assert not np.array_equal(mask, np.asarray(other))


def _numpy_patches(x, p):
    b, h, w, c = x.shape
    out = np.zeros((b, (h // p) * (w // p), p * p * c), np.float64)
    for i in range(h // p):
        for j in range(w // p):
            out[:, i * (w // p) + j] = x[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(b, -1)
    return out


def test_normalised_pixel_targets_and_masked_only_loss_match_numpy():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    patches = _numpy_patches(x, 4)
    np.testing.assert_allclose(np.asarray(patchify(jnp.asarray(x), (4, 4))), patches, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(unpatchify(patchify(jnp.asarray(x), (4, 4)), (4, 4), (8, 8, 3))), x)
    mean, var = patches.mean(-1, keepdims=True), patches.var(-1, keepdims=True)
    truth = (patches - mean) / np.sqrt(var + 1e-6)
    target = np.asarray(mae_task.normalized_targets(jnp.asarray(x), (4, 4)))
    np.testing.assert_allclose(target, truth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mae_task.normalized_targets(jnp.asarray(x), (4, 4), norm_pix=False)),
                               patches, atol=0)
    pred = np.random.default_rng(2).normal(size=truth.shape).astype(np.float32)
    mask = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], np.float32)
    expected = [np.mean([np.mean((pred[b, n] - truth[b, n]) ** 2) for n in range(4) if mask[b, n]])
                for b in range(2)]
    loss = np.asarray(mae_task.masked_mse(jnp.asarray(pred), jnp.asarray(truth, jnp.float32), jnp.asarray(mask)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # visible patches do not count, however wrong their prediction
    pred[0, 1] += 100.0
    pred[1, 0] -= 100.0
    again = mae_task.masked_mse(jnp.asarray(pred), jnp.asarray(truth, jnp.float32), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(again), loss)


def test_encoder_is_a_vit_by_name_and_shape_and_loads_into_the_classifier(any_pool, tmp_path):
    model, params = any_pool
    pool = model.encoder.pool
    vit = ViT(num_classes=5, pool=pool, **ENC)
    template = jax.eval_shape(vit.init, jax.random.PRNGKey(9), images(1))["params"]
    headless = {k: v for k, v in template.items() if k != "head"}
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    assert tree_difference(shapes(params["encoder"]), shapes(headless)) is None
    # Through the official-layout exporter and the pretrained loader, by name.
    save_npz(jax.device_get(params["encoder"]), tmp_path / "enc.npz")
    loaded, report = load_pretrained(str(tmp_path / "enc.npz"), template, head="reset")
    assert report.ok and tree_difference({k: v for k, v in loaded.items() if k != "head"},
                                         jax.device_get(params["encoder"])) is None
    # With every patch visible, the MAE encoder computes exactly the ViT's encoding.
    x = images(2)
    everything = jnp.tile(jnp.arange(16)[None], (2, 1))
    encoded = jax.jit(lambda p: model.apply({"params": p}, x, everything, method=lambda m, x, k: m.encoder(x, k)))(params)
    _, inter = jax.jit(ViT(num_classes=0, pool=pool, **ENC).apply)({"params": params["encoder"]}, x)
    np.testing.assert_allclose(np.asarray(encoded), np.asarray(inter["encoded"]), rtol=1e-6, atol=1e-6)


def test_removed_patches_do_not_reach_the_encoder_or_the_prediction(model_and_params):
    model, params = model_and_params
    x = images(2)
    noise = jax.random.uniform(jax.random.PRNGKey(5), (2, 16))
    pred, mask = forward(model, params, x, noise=noise)
    removed = unpatchify(jnp.broadcast_to(mask[:, :, None], (2, 16, 16)), (4, 4), (SIZE, SIZE, 1))
    changed = x + 5.0 * removed  # only the removed patches change
    pred2, mask2 = forward(model, params, changed, noise=noise)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(mask2))
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(pred2))
    assert pred.shape == (2, 16, 16) and pred.dtype == jnp.float32
    visible_change = x + 5.0 * (1.0 - removed)
    assert not np.allclose(np.asarray(forward(model, params, visible_change, noise=noise)[0]),
                           np.asarray(pred))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.25, 1.5])
def test_a_mask_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        tiny_mae(mask_ratio=ratio).init({"params": jax.random.PRNGKey(0), "mask": jax.random.PRNGKey(1)}, images(1))
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        mae_task.build_model(cls.ModelConfig(variant="Ti/4"), mae_task.MAESettings(mask_ratio=ratio))
    with pytest.raises(config_lib.ConfigError, match="spt"):
        mae_task.build_model(cls.ModelConfig(variant="Ti/4", stem="spt"), mae_task.MAESettings())


def _task(hooks=()):
    model = MAE(encoder=MAEEncoder(num_classes=0, pool="gap", **{**ENC, "depth": 1}), decoder_width=8,
                decoder_depth=1, decoder_heads=2)
    lr = optim.schedule(1e-2, 4, warmup_steps=1)
    tx = optim.make_optimizer("adamw", lr, weight_decay=0.05, b2=0.95, grad_clip_norm=1.0)
    return model, mae_task.make_task(model, tx, image_shape=IMAGE_SHAPE, learning_rate=lr, hooks=hooks)


def test_resume_on_the_loop_is_exact_and_grids_are_drawn(tmp_path):
    model, task = _task()
    kw = dict(train_data=synthetic_data, global_batch_size=8, seed=0, log_every=1, checkpoint_every=2,
              progress=False)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loop.train(task, workdir=straight, total_steps=4, **kw)
    # A run stopped after step 2: the uninterrupted run's step-2 checkpoint, nothing else.
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    results = loop.train(task, workdir=resumed, total_steps=4, **kw)
    assert results["resumed_from_step"] == 2
    assert tree_difference(load_params(straight), load_params(resumed)) is None
    logs = [[{k: v for k, v in json.loads(r).items() if "images_per_second" not in k}
             for r in (wd / "metrics.jsonl").read_text().splitlines()] for wd in (straight, resumed)]
    assert [r for r in logs[0] if r["step"] > 2] == logs[1] and len(logs[1]) == 2
    assert all(np.isfinite(r["train/loss"]) for r in logs[0])
    # The reconstruction grid: 2 rows of masked | reconstruction | original, 8x8 each, padding 2.
    x = next(synthetic_data(0))["image"][:2]
    hook = mae_task.reconstruction_hook(model, jnp.asarray(x), tmp_path, seed=0, norm_pix=True, primary=True)
    hook(4, type("S", (), {"params": load_params(straight)})())
    from PIL import Image

    grid = np.asarray(Image.open(Path(tmp_path) / "plots" / "mae_reconstruction_0000004.png"))
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10)
    masked, recon, mask = jax.jit(lambda p: mae_task.reconstruct(model, p, jnp.asarray(x), jax.random.PRNGKey(0)))(
        load_params(straight))
    visible = 1.0 - np.asarray(unpatchify(jnp.broadcast_to(mask[:, :, None], (2, 4, 16)), (4, 4), IMAGE_SHAPE))
    np.testing.assert_array_equal(np.asarray(recon) * visible, x * visible)  # visible patches shown as they were
    np.testing.assert_array_equal(np.asarray(masked), x * visible)  # removed patches blanked
