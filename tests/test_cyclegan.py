"""CycleGAN: ResNet generator shapes, the image pool against a Python ImagePool, the losses
against their formulas, exact resume including the pools, the translate app. Tiny: 16 px,
widths 4, no residual block in the task tests (the generator tests have them), batches of 2."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import tree_equal
from jaxvision import config as config_lib
from jaxvision.models.resnet_generator import ResnetGenerator, default_num_blocks
from jaxvision.tasks import cyclegan as cg
from jaxvision.train import Checkpointer, loop, parallel

SIZE = 16
CFG = cg.CycleGANConfig(model=cg.CycleGANModelConfig(image_size=SIZE, g_width=4, num_blocks=0, d_width=4, d_layers=1),
                        loss=cg.CycleGANLossConfig(pool_size=3),
                        data=dataclasses.replace(cg.CycleGANDataConfig(), channels=1),
                        global_batch_size=2)


@pytest.fixture(scope="module")
def tiny():
    G, D = cg.build_networks(CFG.model, SIZE, 1)
    return G, D, cg.make_task(G, D, CFG.optim, CFG.loss, image_shape=(SIZE, SIZE, 1))


def batches(start, fail_at=None):
    step = start
    while True:
        if step == fail_at:
            raise KeyboardInterrupt("simulated kill")
        rng = np.random.default_rng(step)
        yield {k: np.tanh(rng.normal(size=(2, SIZE, SIZE, 1)) + shift).astype(np.float32)
               for k, shift in (("a", -0.5), ("b", 0.5))}
        step += 1


# --- generator -----------------------------------------------------------------------------------

def random_params(module, x, seed=0):
    """Parameters of `module` drawn in NumPy (N(0, 0.02) weights, N(0, 0.1) biases): no
    compile for init, so the test compiles the forward pass only."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    return jax.tree_util.tree_map_with_path(
        lambda p, s: rng.normal(0, 0.1 if "bias" in jax.tree_util.keystr(p) else 0.02, s.shape).astype(np.float32),
        shapes)


def test_resnet_generator_shapes_and_block_count():
    assert [default_num_blocks(s) for s in (28, 32, 64, 128, 256, 512)] == [3, 3, 3, 6, 9, 9]
    G = ResnetGenerator(channels=3, image_size=32, width=4)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 24, 3)), jnp.float32)  # any multiple of 4
    params = random_params(G, x)
    assert len([k for k in params if k.startswith("ResidualBlock")]) == 3
    # c7s1-4, d8, d16, R16 x 3, u8, u4, c7s1-3: the paper's channel plan at width 4.
    kernels = {k: v["kernel"].shape for k, v in params.items() if "kernel" in v}
    assert kernels == {"Conv_0": (7, 7, 3, 4), "Conv_1": (3, 3, 4, 8), "Conv_2": (3, 3, 8, 16),
                       "ConvTranspose_0": (3, 3, 16, 8), "ConvTranspose_1": (3, 3, 8, 4), "Conv_3": (7, 7, 4, 3)}
    assert params["ResidualBlock_0"]["Conv_0"]["kernel"].shape == (3, 3, 16, 16)
    y = jax.jit(G.apply)({"params": params}, x)
    assert y.shape == (2, 32, 24, 3) and float(jnp.abs(y).max()) < 1.0  # tanh
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(G.apply, {"params": params}, jnp.zeros((1, 30, 30, 3)))


def test_generator_is_per_example_and_ignores_brightness_and_contrast():
    # Instance norm after the first conv: G(s * x + t) = G(x) for s > 0 (up to its eps),
    # and each example's output depends on that example alone (no batch statistics).
    G = ResnetGenerator(channels=1, image_size=16, width=4, num_blocks=1)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    params = random_params(G, x, seed=1)
    apply = jax.jit(lambda x: G.apply({"params": params}, x))
    y = apply(x)
    np.testing.assert_allclose(apply(0.5 * x + 0.2), y, atol=1e-3)  # eps 1e-5 leaves ~3e-4
    assert float(jnp.abs(apply(-x) - y).max()) > 1e-2  # while a different image changes it
    np.testing.assert_array_equal(apply(jnp.concatenate([x[:1], -x[1:]]))[0], y[0])  # example 1 changed, 0 not


# --- image pool ------------------------------------------------------------------------------------

def reference_query(pool, images, u, index, size):
    """The CycleGAN code's ImagePool.query, in plain Python, with the given draws."""
    shown = []
    for image, u_i, j in zip(images, u, index):
        if len(pool) < size:
            pool.append(image)
            shown.append(image)
        elif u_i > 0.5:
            shown.append(pool[j])
            pool[j] = image
        else:
            shown.append(image)
    return np.stack(shown)


def test_image_pool_matches_the_cyclegan_image_pool():
    size, shape = 3, (2, 2, 1)
    pool, ref, swapped = cg.init_pool(size, shape), [], 0
    query = jax.jit(cg.pool_query)
    for t in range(6):
        images = (np.full((2, *shape), float(t)) + np.arange(2)[:, None, None, None] / 10).astype(np.float32)
        rng = jax.random.PRNGKey(t)
        shown, pool = query(pool, jnp.asarray(images), rng)
        u, index = map(np.asarray, cg.pool_draws(rng, 2, size))
        expected = reference_query(ref, images, u, index, size)
        np.testing.assert_array_equal(shown, expected)
        np.testing.assert_array_equal(pool["images"][: len(ref)], np.stack(ref))
        assert int(pool["count"]) == len(ref)
        swapped += int((np.asarray(shown) != images).any(axis=(1, 2, 3)).sum())
    assert swapped > 0  # the test saw stored images returned, not only fresh ones


# --- losses and resume ---------------------------------------------------------------------------------

def test_losses_follow_their_formulas(tiny):
    G, D, task = tiny
    form = parallel.make("mesh")  # the loop's own compiled step: the resume test reuses it
    form.prepare(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    state = form.init(task.init, jax.random.PRNGKey(0))
    before = jax.device_get(state)  # the step donates its input
    batch = {k: jnp.asarray(v) for k, v in next(batches(0)).items()}
    new, m = form.compile_step(task.train_step)(state, form.put_batch(batch))
    g, d0, d1 = before.params["generator"], before.params["discriminator"], new.params["discriminator"]
    g_apply = jax.jit(lambda p, x: G.apply({"params": p}, x))  # one compile each, not one per op
    d_apply = jax.jit(lambda p, x: D.apply({"params": p}, x))
    run_g = lambda k, x: np.asarray(g_apply(g[k], jnp.asarray(x, jnp.float32)), np.float64)  # noqa: E731
    run_d = lambda p, x: np.asarray(d_apply(p, jnp.asarray(x, jnp.float32)), np.float64)  # noqa: E731
    a, b = np.asarray(batch["a"], np.float64), np.asarray(batch["b"], np.float64)
    fake_b, fake_a = run_g("a2b", batch["a"]), run_g("b2a", batch["b"])
    l1 = lambda x, y: np.mean(np.abs(x - y))  # noqa: E731
    # The paper's weights (cycle 10, identity 0.5 x 10), halved with the LS G loss's 0.5.
    cycle = 0.5 * 10 * (l1(run_g("b2a", fake_b), a) + l1(run_g("a2b", fake_a), b))
    identity = 0.5 * 0.5 * 10 * (l1(run_g("a2b", batch["b"]), b) + l1(run_g("b2a", batch["a"]), a))
    adv = sum(0.5 * np.mean((run_d(d1[k], f) - 1) ** 2) for k, f in (("a", fake_a), ("b", fake_b)))
    np.testing.assert_allclose(float(m["g_cycle"]), cycle, rtol=1e-5)
    np.testing.assert_allclose(float(m["g_identity"]), identity, rtol=1e-5)
    np.testing.assert_allclose(float(m["g_loss"]), adv + cycle + identity, rtol=1e-5)
    # D's first step: the pools (size 3 >= batch 2) are filling, so D sees the fresh fakes.
    d_loss = sum(0.5 * np.mean((run_d(d0[k], r) - 1) ** 2) + 0.5 * np.mean(run_d(d0[k], f) ** 2)
                 for k, r, f in (("a", a, fake_a), ("b", b, fake_b)))
    np.testing.assert_allclose(float(m["d_loss"]), d_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.extra["pool"]["b"]["images"][:2]), fake_b, atol=1e-6)


def train(task, workdir, total=6, fail_at=None):
    return loop.train(task, workdir=workdir, total_steps=total, global_batch_size=2, log_every=2, checkpoint_every=3,
                      progress=False, train_data=lambda s: batches(s, fail_at), config=config_lib.to_dict(CFG))


def restore(task, workdir):
    c = Checkpointer(workdir / "checkpoints", save_every=1)
    out = c.restore(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    c.close()
    return out[0]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cyclegan")
    train(tiny[2], root / "straight", total=5)
    return root


def test_kill_and_resume_is_bit_identical_including_the_pools(tiny, trained):
    task = tiny[2]
    with pytest.raises(KeyboardInterrupt):
        train(task, trained / "killed", total=5, fail_at=4)  # checkpoint at 3, killed before step 5
    train(task, trained / "killed", total=5)
    a, b = restore(task, trained / "straight"), restore(task, trained / "killed")
    assert int(a.extra["pool"]["a"]["count"]) == 3  # the pools filled (and swap from step 2 on)
    assert tree_equal(a, b)  # generators, D's, optimisers, pools, step, rng


# --- translate app -------------------------------------------------------------------------------------

def write_images(folder, count, size, mode):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0]) + (() if mode == "L" else (3,)), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{i}.png")


def test_translate_app_resizes_or_tiles_and_refuses_bad_input(trained, tmp_path, capsys):
    from jaxvision.apps import translate

    run = trained / "straight"
    write_images(tmp_path / "in", 2, (20, 36), "L")
    for mode in ("resize", "tile"):
        out = tmp_path / mode
        translate.main(["--run", str(run), "--direction", "a2b", "--input", str(tmp_path / "in"), "--output",
                        str(out), "--mode", mode, "--no-progress"])
        for i in range(2):
            with Image.open(out / f"img{i}.png") as im:
                assert im.size == (20, 36) and im.mode == "L"  # the input's own size
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        translate.main(["--run", str(run), "--direction", "b2a", "--input", str(tmp_path / "empty"),
                        "--output", str(tmp_path / "o")])
    write_images(tmp_path / "rgb", 1, (16, 16), "RGB")
    with pytest.raises(SystemExit, match="RGB.*grayscale|grayscale.*RGB"):
        translate.main(["--run", str(run), "--direction", "a2b", "--input", str(tmp_path / "rgb"),
                        "--output", str(tmp_path / "o")])
    assert json.loads((run / "config.json").read_text())["model"]["g_width"] == 4
