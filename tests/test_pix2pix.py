"""pix2pix: the U-Net and PatchGAN models (shapes, receptive field analytically and by
the gradient of one output), the task on the one adversarial step, and exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.patchgan import PatchGAN, layers_for_image_size, receptive_field


def key(i=0):
    return jax.random.key(i, impl="rbg")  # fast to compile on CPU (see test_dcgan)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _brute_receptive_field(n_layers):
    """Receptive field by composing the layers' index intervals (independent of the formula)."""
    lo, hi = 0, 0  # input pixels seen by output pixel 0, going from the output back
    for stride in reversed([2] * n_layers + [1, 1]):
        lo, hi = lo * stride - 1, hi * stride - 1 + 3  # kernel 4, padding 1
    return hi - lo + 1


def test_patchgan_receptive_field_formula():
    assert [receptive_field(n) for n in (1, 2, 3, 4)] == [16, 34, 70, 142]
    assert all(receptive_field(n) == _brute_receptive_field(n) for n in range(1, 6))
    assert layers_for_image_size(256) == 3 and receptive_field(3) == 70  # the paper's 70x70 D
    assert layers_for_image_size(128) == 2 and layers_for_image_size(28) == 1


@pytest.mark.parametrize("n_layers,size", [(2, 40)])  # n=1 and the rest: formula and intervals
def test_patchgan_receptive_field_by_gradient(n_layers, size):
    d = PatchGAN(image_size=size, width=2, n_layers=n_layers, norm="none")
    x = normal(0, (1, size, size, 1))
    params = d.init(key(), x)
    out = d.apply(params, x)
    i, j = out.shape[1] // 2, out.shape[2] // 2  # an interior output, not clipped by the border
    grad = jax.grad(lambda x: d.apply(params, x)[0, i, j, 0])(x)[0, :, :, 0]
    rows, cols = np.nonzero(np.abs(np.asarray(grad)) > 0)
    assert rows.max() - rows.min() + 1 == receptive_field(n_layers)
    assert cols.max() - cols.min() + 1 == receptive_field(n_layers)
    assert rows.min() > 0 and rows.max() < size - 1  # the field lies inside the image


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patchgan_shapes_condition_and_collections(norm):
    d = PatchGAN(image_size=28, width=4, norm=norm)
    x, c = normal(1, (2, 28, 28, 1)), normal(2, (2, 28, 28, 2))
    variables = d.init(key(), x, c)
    assert variables["params"]["conv0"]["kernel"].shape == (4, 4, 3, 4)  # image + condition channels
    assert ("batch_stats" in variables) == (norm == "batch")
    logits, updates = d.apply(variables, x, c, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 12, 12, 1) and logits.dtype == jnp.float32  # 28 -> 14 -> 13 -> 12
    std = float(np.std(np.asarray(variables["params"]["conv1"]["kernel"])))
    assert 0.01 < std < 0.03  # N(0, 0.02) init
    with pytest.raises(ValueError, match="share batch, height"):
        d.apply(variables, x, c[:, :14])


from jaxvision.models.unet import UNet, depth_for_image_size  # noqa: E402


def test_unet_shapes_padding_and_options():
    assert depth_for_image_size(256) == 8 and depth_for_image_size(28) == 5 and depth_for_image_size(1000) == 8
    u = UNet(image_size=12, out_channels=3, width=2, depth=2)  # 12 px: no padding at depth 2
    x = normal(3, (2, 12, 12, 2))
    variables = jax.jit(u.init)(key(), x)
    assert sorted(k for k in variables["params"] if k[4:].isdigit() and k.startswith("down")) == [
        f"down{i}" for i in range(2)]
    train = jax.jit(lambda v, x, r: u.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": r})[0])
    y, y2 = train(variables, x, key(1)), train(variables, x, key(2))
    assert y.shape == (2, 12, 12, 3) and float(jnp.max(jnp.abs(y))) <= 1.0
    assert not np.allclose(y, y2)  # dropout is on in training
    evaluate = jax.jit(u.apply)
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))  # deterministic at eval
    odd = normal(5, (2, 20, 17, 2))
    raw = UNet(image_size=20, out_channels=5, width=2, output_activation=None, dropout=0.0, norm="instance")
    shape = jax.eval_shape(lambda x: raw.apply(raw.init(key(), x), x), odd)
    assert shape.shape == (2, 20, 17, 5)
    assert "batch_stats" not in jax.eval_shape(raw.init, key(), odd)


def test_unet_resize_conv_decoder_has_no_checkerboard():
    # A constant image through one level (conv 4x4 s2, then the decoder's upsampling): a
    # stride-2 transposed conv gives its 2x2 output phases different kernel taps, so the
    # interior alternates (checkerboard, Odena et al. 2016); nearest resize + conv 3x3 does not.
    x = jnp.ones((1, 16, 16, 1))
    interior = {}
    for method in ("transpose", "resize_conv"):
        u = UNet(image_size=16, width=4, depth=1, norm="none", dropout=0.0, output_activation=None, upsample=method)
        v = u.init(key(), x)
        assert ("kernel" in v["params"]["up0"]) == (method == "transpose")  # the paper's names kept
        interior[method] = np.asarray(u.apply(v, x))[0, 4:12, 4:12, 0]
    assert np.ptp(interior["transpose"]) > 1e-3
    assert np.ptp(interior["resize_conv"]) < 1e-6
    with pytest.raises(ValueError, match="upsample='bilinear'"):
        UNet(image_size=16, width=2, upsample="bilinear").init(key(), x)


def _support_width(fn, x, i, j):
    grad = np.abs(np.asarray(jax.jit(jax.grad(lambda x: fn(x)[0, i, j, 0]))(x)))[0, :, :, 0]
    rows, cols = np.nonzero(grad > 0)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_unet_receptive_field():
    x = normal(4, (1, 8, 8, 1))
    # depth 1: a 4x4 stride-2 conv then a 4x4 stride-2 transposed conv (each output pixel
    # reads 4/2 = 2 bottleneck pixels): (2 - 1) * 2 + 4 = 6 px.
    shallow = UNet(image_size=8, width=2, depth=1, norm="none", dropout=0.0)
    v = shallow.init(key(), x)
    assert _support_width(lambda x: shallow.apply(v, x), x, 3, 4) == (6, 6)
    # sized by the image: the bottleneck is 1x1, so every output pixel sees the whole image.
    full = UNet(image_size=8, width=2, norm="none", dropout=0.0)  # depth 3: 8 -> 1
    v = jax.jit(full.init)(key(), x)
    assert _support_width(lambda x: full.apply(v, x), x, 1, 6) == (8, 8)


# --- the pix2pix task on the one adversarial step -------------------------------------

import dataclasses  # noqa: E402

from helpers import tree_equal  # noqa: E402
from jaxvision import config as config_lib  # noqa: E402
from jaxvision.data.masks import add_masks  # noqa: E402
from jaxvision.tasks import pix2pix  # noqa: E402
from jaxvision.train import Checkpointer, loop  # noqa: E402

SIZE = 12  # tiny (SSIM needs 11 px): the tests check wiring and resume, not learning
TINY = pix2pix.Pix2PixModelConfig(g_width=4, d_width=4, g_depth=2, d_layers=1)


def tiny_task(**kw):
    g, d = pix2pix.build_networks(TINY, SIZE, 1)
    return pix2pix.make_task(g, d, pix2pix.GANOptimConfig(), image_shape=(SIZE, SIZE, 1), **kw)


def inpaint_data(start, batch=4, fail_at=None):
    step = start
    while True:
        if step == fail_at:
            raise KeyboardInterrupt("simulated kill")
        images = np.tanh(np.random.default_rng(step).normal(size=(batch, SIZE, SIZE, 1))).astype(np.float32)
        out = add_masks({"image": images}, kind="mixed", seed=0, first_index=step * batch)
        yield {k: out[k] for k in pix2pix.INPUT_KEYS}
        step += 1


@pytest.fixture(scope="module")
def gan_task():
    return tiny_task()


def _train(task, workdir, **kw):
    cfg = pix2pix.Pix2PixConfig(model=dataclasses.replace(TINY, image_size=SIZE, channels=1))
    return loop.train(task, workdir=workdir, total_steps=4, global_batch_size=4, log_every=2, checkpoint_every=2,
                      progress=False, train_data=lambda s: inpaint_data(s, **kw), config=config_lib.to_dict(cfg))


def _restore(task, workdir):
    c = Checkpointer(workdir / "checkpoints", save_every=1)
    out = c.restore(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    c.close()
    return out[0]


@pytest.fixture(scope="module")
def tiny_run(gan_task, tmp_path_factory):
    """4 steps of the tiny task through the loop: one compilation serves the step, resume and app tests."""
    workdir = tmp_path_factory.mktemp("pix2pix") / "run"
    results = _train(gan_task, workdir)
    assert {"train_d_loss", "train_g_l1", "train_d_real", "train_d_fake", "train_g_loss"} <= set(results)
    return workdir


def test_eval_counts_real_examples_only(gan_task, tiny_run):
    trained = _restore(gan_task, tiny_run)
    batch = {k: jnp.asarray(v) for k, v in next(inpaint_data(9)).items()}
    # Eval: sums over the real examples only (the padding row, mask False, is left out).
    stats = jax.jit(gan_task.eval_step)(trained, {**batch, "mask": jnp.array([True, True, True, False])})
    assert float(stats["count"]) == 3 and 0 < float(stats["ssim"]) / 3 <= 1 and float(stats["hole_psnr"]) > 0


def test_paste_keeps_known_pixels():
    batch = next(inpaint_data(3))
    raw = normal(6, batch["target"].shape)
    out, hole = np.asarray(pix2pix.paste(raw, batch)), batch["hole"] > 0.5
    np.testing.assert_array_equal(out[~hole[..., 0]], batch["target"][~hole[..., 0]])
    np.testing.assert_array_equal(out[hole[..., 0]], np.asarray(raw)[hole[..., 0]])


def test_l1_only_ablation_ignores_the_discriminator(gan_task, tiny_run):
    # G's update must not depend on D's weights at all (it would through D's logits if the
    # adversarial term reached G's gradient). The trained tiny run's state is the start.
    l1_task = tiny_task(adversarial_loss=False)
    state = _restore(gan_task, tiny_run)
    batch = {k: jnp.asarray(v) for k, v in next(inpaint_data(0)).items()}
    other_d = state.replace(params={**state.params, "discriminator": jax.tree_util.tree_map(
        lambda p: p + 0.05, state.params["discriminator"])})
    step = jax.jit(l1_task.train_step)
    (a, ma), (b, mb) = step(state, batch), step(other_d, batch)
    assert tree_equal(a.params["generator"], b.params["generator"])
    assert not tree_equal(a.params["discriminator"], b.params["discriminator"])  # D itself still trains
    assert float(ma["g_l1"]) == float(mb["g_l1"]) and float(ma["g_loss"]) != float(mb["g_loss"])


def test_steps_train_both_networks_and_kill_and_resume_is_bit_identical(gan_task, tiny_run, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(gan_task, tmp_path / "killed", fail_at=3)
    at_2, at_4 = _restore(gan_task, tmp_path / "killed"), _restore(gan_task, tiny_run)
    assert (int(at_2.step), int(at_4.step)) == (2, 4)
    for net in ("generator", "discriminator"):  # steps 3 and 4 moved both networks
        assert not tree_equal(at_2.params[net], at_4.params[net])
        assert not tree_equal(at_2.opt_state[net], at_4.opt_state[net])
    assert not tree_equal(at_2.model_state["generator"], at_4.model_state["generator"])  # BatchNorm stats
    assert not tree_equal(at_2.extra["ema"], at_4.extra["ema"])
    _train(gan_task, tmp_path / "killed")
    # Both networks, both optimisers, EMA, BatchNorm statistics, step and rng.
    assert tree_equal(_restore(gan_task, tiny_run), _restore(gan_task, tmp_path / "killed"))


def test_recomputed_batch_stats_are_those_of_the_given_weights_without_dropout():
    # Depth 3: a BatchNorm in the encoder (down_norm1) and two with dropout after them.
    g, _ = pix2pix.build_networks(dataclasses.replace(TINY, g_depth=3), SIZE, 1)
    b1, b2 = ({k: jnp.asarray(v) for k, v in next(inpaint_data(s, batch=8)).items()} for s in (20, 21))
    variables = g.init(key(3), pix2pix.model_input(b1), train=False)
    params = jax.tree_util.tree_map(lambda p: p * 25.0, variables["params"])  # features of order 1
    far = jax.tree_util.tree_map(lambda s: s + 3.0, variables["batch_stats"])  # far from anything
    one = pix2pix.recompute_batch_stats(g, params, far, [b1])
    assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(far)
    # BatchNorm's definition: in inference mode with these statistics G reproduces the
    # train-mode (batch-statistics) output of the same batch without dropout ...
    no_dropout = g.clone(dropout=0.0)
    train_out, _ = no_dropout.apply({"params": params, "batch_stats": far}, pix2pix.model_input(b1), train=True,
                                    mutable=["batch_stats"])
    inference = g.apply({"params": params, "batch_stats": one}, pix2pix.model_input(b1), train=False)
    np.testing.assert_allclose(inference, train_out, atol=2e-5)
    assert np.abs(np.asarray(g.apply({"params": params, "batch_stats": far}, pix2pix.model_input(b1),
                                     train=False)) - np.asarray(train_out)).max() > 0.1
    # ... and the given running statistics do not matter at all.
    other = jax.tree_util.tree_map(lambda s: s * 7.0, far)
    assert tree_equal(pix2pix.recompute_batch_stats(g, params, other, [b1]), one)
    # Over two batches, the first BatchNorm (whose input no other norm touches) gets the
    # statistics of the two batches together: against NumPy on the conv features.
    two = pix2pix.recompute_batch_stats(g, params, far, [b1, b2])
    x = np.concatenate([pix2pix.model_input(b) for b in (b1, b2)])
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")  # 12 px to a multiple of 2**3
    h = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32), params["down0"]["kernel"], (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), np.float64) + np.asarray(params["down0"]["bias"])
    h = np.where(h > 0, h, 0.2 * h)
    h = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(h, jnp.float32), params["down1"]["kernel"], (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), np.float64)
    np.testing.assert_allclose(two["down_norm1"]["mean"], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two["down_norm1"]["var"], h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert pix2pix.recompute_batch_stats(g, params, {}, [b1]) == {}  # no BatchNorm: nothing to do
    with pytest.raises(ValueError, match="no batches"):
        pix2pix.recompute_batch_stats(g, params, far, [])


# --- the inpaint app ---------------------------------------------------------------------

from PIL import Image  # noqa: E402

from jaxvision.apps import inpaint as app  # noqa: E402


def _png(path, array, mode=None):
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    return str(path)


def test_inpaint_app_fills_only_the_hole_at_any_size(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 21), dtype=np.uint8)
    mask = np.zeros((30, 21), np.uint8)
    mask[5:12, 3:9] = 255
    image, mask_path = _png(tmp_path / "in.png", pixels), _png(tmp_path / "mask.png", mask)
    for mode in app.MODES:
        out = tmp_path / f"out_{mode}.png"
        assert app.main(["--run", str(tiny_run), "--image", image, "--mask", mask_path, "--out", str(out),
                         "--mode", mode, "--no-progress"]) == 0
        result = np.asarray(Image.open(out))
        assert result.shape == (30, 21)
        np.testing.assert_array_equal(result[mask == 0], pixels[mask == 0])  # known pixels untouched
        assert not np.array_equal(result[mask > 0], np.full((mask > 0).sum(), 128))  # the hole was filled


def test_ema_completer_uses_the_ema_weights_with_statistics_of_their_own(tiny_run, tfds_data_dir, tmp_path):
    from jaxvision.train import load_params

    (raw, cfg), (ema, _) = (pix2pix.load_completer(tiny_run, weights=w, calibration_images=256)
                            for w in pix2pix.WEIGHTS)
    g, _ = pix2pix.build_networks(cfg.model, SIZE, 1)
    ema_params = load_params(tiny_run, collection="extra")["ema"]
    stats = pix2pix.recompute_batch_stats(g, ema_params, load_params(tiny_run, collection="model_state")["generator"],
                                          pix2pix.calibration_batches(cfg.data, 256))
    batch = {k: jnp.asarray(v) for k, v in next(inpaint_data(30)).items()}
    np.testing.assert_allclose(ema(batch), pix2pix.complete(g, ema_params, stats, batch), atol=1e-6)  # jit rounding
    assert not np.array_equal(ema(batch), raw(batch))
    with pytest.raises(ValueError, match="choose one of"):
        pix2pix.load_completer(tiny_run, weights="average")
    with pytest.raises(ValueError, match="multiple of 256"):
        pix2pix.load_completer(tiny_run, weights="ema", calibration_images=100)
    with pytest.raises(ValueError, match="fewer than 512 images"):
        list(pix2pix.calibration_batches(dataclasses.replace(cfg.data, train_split="train[:300]"), 512))
    pixels = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2:6, 3:8] = 255
    out = tmp_path / "ema.png"
    assert app.main(["--run", str(tiny_run), "--image", _png(tmp_path / "i.png", pixels), "--mask",
                     _png(tmp_path / "m.png", mask), "--out", str(out), "--weights", "ema", "--no-progress"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out))[mask == 0], pixels[mask == 0])


def test_inpaint_app_refuses_bad_input(tiny_run, tmp_path, capsys):
    gray = _png(tmp_path / "g.png", np.full((16, 16), 100))
    rgb = _png(tmp_path / "c.png", np.random.default_rng(1).integers(0, 256, (16, 16, 3)))
    good = np.zeros((16, 16), np.uint8)
    good[4:8, 4:8] = 255
    cases = {
        "same size": (gray, _png(tmp_path / "m1.png", good[:12])),
        "all black": (gray, _png(tmp_path / "m2.png", np.zeros((16, 16)))),
        "all white": (gray, _png(tmp_path / "m3.png", np.full((16, 16), 255))),
        "trained on grayscale": (rgb, _png(tmp_path / "m4.png", good)),
    }
    for message, (image, mask) in cases.items():
        code = app.main(["--run", str(tiny_run), "--image", image, "--mask", mask, "--out", str(tmp_path / "o.png")])
        assert code == 2 and message in capsys.readouterr().err
    assert app.main(["--run", str(tiny_run), "--image", rgb, "--mask", str(tmp_path / "m4.png"), "--convert",
                     "--out", str(tmp_path / "o.png"), "--no-progress"]) == 0
    assert app.main(["--run", str(tmp_path), "--image", gray, "--mask", str(tmp_path / "m4.png"),
                     "--out", str(tmp_path / "o.png")]) == 2
    assert "No pix2pix run" in capsys.readouterr().err
