import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tree_equal
from jaxvision.tasks import gan
from jaxvision.train import Checkpointer, NonFiniteLossError, loop

CFG = gan.GANOptimConfig()


def tiny_gan(conditional=False, **optim):
    model = gan.GANModelConfig(latent_dim=8, g_width=8, d_width=8, conditional=conditional)
    G, D = gan.build_networks(model, 28, 1, 10 if conditional else None)
    return G, D, gan.make_task(G, D, dataclasses.replace(CFG, **optim), image_shape=(28, 28, 1),
                               conditional=conditional)


def data(start, batch=8, fail_at=None, nan_from=None):
    step = start
    while True:
        if step == fail_at:
            raise KeyboardInterrupt("simulated kill")
        rng = np.random.default_rng(step)
        images = np.tanh(rng.normal(size=(batch, 28, 28, 1))).astype(np.float32)
        if nan_from is not None and step >= nan_from:
            images[:] = np.nan
        yield {"image": images, "label": rng.integers(0, 10, batch).astype(np.int32)}
        step += 1


def train(task, workdir, total=6, **kw):
    return loop.train(task, workdir=workdir, total_steps=total, global_batch_size=8, log_every=2,
                      checkpoint_every=3, progress=False, train_data=lambda s: data(s, **kw))


def restore(task, workdir):
    c = Checkpointer(workdir / "checkpoints", save_every=1)
    out = c.restore(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    c.close()
    return out


def test_a_step_updates_both_networks_and_the_ema():
    _, _, task = tiny_gan()
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in next(data(0)).items()}
    new, metrics = jax.jit(task.train_step)(state, batch)
    assert int(new.step) == 1
    for net in ("generator", "discriminator"):
        assert not tree_equal(new.params[net], state.params[net])
    assert not tree_equal(new.extra["ema"], state.extra["ema"])
    assert not tree_equal(new.model_state["generator"], state.model_state["generator"])  # BatchNorm stats
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert 0 < float(metrics["d_real"]) < 1 and 0 < float(metrics["d_fake"]) < 1


def test_ema_follows_its_formula():
    _, _, task = tiny_gan(ema_decay=0.5)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    state = state.replace(step=jnp.asarray(100, jnp.int32))  # past the warm-up: decay = 0.5
    batch = {k: jnp.asarray(v) for k, v in next(data(0)).items()}
    new, _ = jax.jit(task.train_step)(state, batch)
    expected = jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, state.extra["ema"], new.params["generator"])
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(new.extra["ema"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_kill_and_resume_is_bit_identical(tmp_path):
    _, _, task = tiny_gan()
    train(task, tmp_path / "straight", total=7)
    with pytest.raises(KeyboardInterrupt):
        train(task, tmp_path / "killed", total=7, fail_at=5)
    train(task, tmp_path / "killed", total=7)
    a, _, _ = restore(task, tmp_path / "straight")
    b, _, _ = restore(task, tmp_path / "killed")
    assert tree_equal(a, b)  # both networks, both optimisers, EMA, BatchNorm stats, step, rng


def test_conditional_gan_with_wgan_gp_trains(tmp_path):
    _, _, task = tiny_gan(conditional=True, loss="wgan", gp_weight=10.0, n_critic=2)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in next(data(0, batch=16)).items()}
    new, metrics = jax.jit(task.train_step)(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    with pytest.raises(ValueError, match="conditional GAN needs labelled batches"):
        task.train_step(state, {"image": batch["image"]})


def test_nan_stops_with_the_last_good_checkpoint_kept(tmp_path):
    _, _, task = tiny_gan()
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(task, tmp_path, total=6, nan_from=4)
    state, _, step = restore(task, tmp_path)
    assert step == 3 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


def test_unknown_loss_is_refused():
    from jaxvision.config import ConfigError

    with pytest.raises(ConfigError, match="Unknown GAN loss"):
        tiny_gan(loss="minimax")


def test_fd_every_off_the_sampling_steps_is_refused(tmp_path):
    from jaxvision.config import ConfigError

    cfg = gan.GANConfig(sample_every=5000, fd=gan.FDConfig(every=11_000))
    with pytest.raises(ConfigError, match="multiple of sample_every=5000"):
        gan.run(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_fixed_noise_is_fixed():
    z1, y1 = gan.fixed_noise(0, 20, 8, 10)
    z2, y2 = gan.fixed_noise(0, 20, 8, 10)
    assert np.array_equal(z1, z2) and list(y1[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    from jaxvision.metrics.evaluators import quantize

    q = quantize(jnp.array([-1.0, 0.0, 0.999, 1.0]))
    np.testing.assert_allclose(q * 127.5 + 127.5, np.round(q * 127.5 + 127.5), atol=1e-4)


def test_progress_bar_shows_the_gan_losses():
    _, _, task = tiny_gan()
    assert task.progress_metrics == ("d_loss", "g_loss")


def test_n_critic_must_be_positive():
    from jaxvision.config import ConfigError

    with pytest.raises(ConfigError, match="n_critic must be >= 1"):
        tiny_gan(n_critic=0)
    _, _, task = tiny_gan(n_critic=2)
    with pytest.raises(ValueError, match="does not split into n_critic=2"):  # checked before the state is read
        task.train_step(None, {"image": jnp.zeros((15, 28, 28, 1))})


def test_ema_samples_use_batchnorm_statistics_of_the_ema_weights():
    G, _, task = tiny_gan(conditional=True)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    # EMA weights that differ from the raw ones, and raw running statistics far from anything.
    ema = jax.tree_util.tree_map(lambda p: p * 1.5 + 0.01, state.params["generator"])
    raw_stats = jax.tree_util.tree_map(lambda s: s + 3.0, state.model_state["generator"])
    state = state.replace(extra={"ema": ema}, model_state={**state.model_state, "generator": raw_stats})
    z, y = gan.fixed_noise(1, 64, 8, 10)
    new = gan.with_ema_batch_stats(G, state, z, y)
    stats = new.model_state["generator"]
    assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(raw_stats)
    # Independent truth, BatchNorm's definition: in inference mode with these statistics the
    # EMA generator reproduces its train-mode (batch-statistics) output on the same batch.
    train_mode, _ = G.apply({"params": ema, "batch_stats": raw_stats}, z, y, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(gan.sample(G, new, z, y), train_mode, atol=2e-5)
    # ... which the raw statistics do not; and they no longer matter at all.
    assert np.abs(np.asarray(gan.sample(G, state, z, y)) - np.asarray(train_mode)).max() > 0.1
    other = state.replace(model_state={**state.model_state,
                                       "generator": jax.tree_util.tree_map(lambda s: s * 7.0, raw_stats)})
    assert tree_equal(gan.with_ema_batch_stats(G, other, z, y).model_state, new.model_state)
    # The first BatchNorm's statistics against NumPy: mean and (biased) variance per channel
    # of the EMA projection of [z, embed(y)].
    h = np.concatenate([np.asarray(z, np.float64), np.asarray(ema["label_embed"]["embedding"], np.float64)[y]], -1)
    h = (h @ np.asarray(ema["project"]["kernel"], np.float64)).reshape(64, 7, 7, -1)
    np.testing.assert_allclose(stats["project_bn"]["mean"], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["project_bn"]["var"], h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_ema_batch_stats_option_is_checked():
    G, _, _ = tiny_gan()
    with pytest.raises(Exception, match="ema_batch_stats must be one of"):
        gan.ema_sampling_state(G, dataclasses.replace(gan.GANConfig(), ema_batch_stats="median"), None)
    with pytest.raises(Exception, match="at least 2"):
        gan.ema_sampling_state(G, dataclasses.replace(gan.GANConfig(), ema_stats_samples=1), None)
