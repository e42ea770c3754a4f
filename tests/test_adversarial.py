"""The shared adversarial step: logs over n_critic, extra generator losses and pytree
(two-domain) networks against hand computations, and the WGAN-GP draws under pmap."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers import assert_tree_equal, tree_equal
from jaxvision.tasks import adversarial, gan

ROOT = Path(__file__).resolve().parent.parent


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_n_critic_2_logs_the_mean_of_both_critic_steps():
    model = gan.GANModelConfig(latent_dim=8, g_width=8, d_width=8)
    G, D = gan.build_networks(model, 28, 1, None)
    cfg = gan.GANOptimConfig(n_critic=2)
    task = gan.make_task(G, D, cfg, image_shape=(28, 28, 1))
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    images = np.tanh(np.random.default_rng(0).normal(size=(16, 28, 28, 1))).astype(np.float32)
    new, metrics = jax.jit(task.train_step)(state, {"image": images})

    # The two critic steps by hand: D step i on images[8i:8i+8], noise from step_rng(i).
    tx = optax.adam(cfg.d_learning_rate, b1=cfg.b1, b2=cfg.b2)
    d_params, d_opt = state.params["discriminator"], state.opt_state["discriminator"]
    g_vars = {"params": state.params["generator"], "batch_stats": state.model_state["generator"]}
    logged = []
    for i in range(2):
        z_rng, _ = jax.random.split(state.step_rng(i))
        fake, _ = G.apply(g_vars, jax.random.normal(z_rng, (8, 8)), None, train=True, mutable=["batch_stats"])
        real = images[8 * i:8 * i + 8]
        critic = lambda p, x: D.apply({"params": p}, x, None, train=True)  # noqa: E731
        r, f = (np.asarray(critic(d_params, x), np.float64) for x in (real, fake))
        logged.append((np.mean(_softplus(-r)) + np.mean(_softplus(f)), np.mean(_sigmoid(r)), np.mean(_sigmoid(f))))
        grads = jax.grad(lambda p: jnp.mean(jax.nn.softplus(-critic(p, real)))
                         + jnp.mean(jax.nn.softplus(critic(p, fake))))(d_params)
        updates, d_opt = tx.update(grads, d_opt, d_params)
        d_params = optax.apply_updates(d_params, updates)

    # These are the critic steps the task took: its D ends where the hand steps end.
    got, want = jax.tree_util.tree_flatten_with_path(new.params["discriminator"]), \
        jax.tree_util.tree_flatten_with_path(d_params)
    assert [p for p, _ in got[0]] == [p for p, _ in want[0]] and got[1] == want[1]
    for (_, a), (_, b) in zip(got[0], want[0]):
        np.testing.assert_allclose(a, b, atol=2e-6)
    first, last = np.asarray(logged[0]), np.asarray(logged[1])
    mean = (first + last) / 2
    for k, name in enumerate(("d_loss", "d_real", "d_fake")):
        np.testing.assert_allclose(float(metrics[name]), mean[k], rtol=2e-5)
    assert abs(mean[0] - last[0]) > 1e-4  # the mean, not the last step's value


def _two_domain_step(cycle_weight):
    """A CycleGAN-shaped use with plain linear maps: G = {ab, ba}, D = {a, b}."""
    def generate(p, s, inputs, train):
        return {"b": inputs["a"] @ p["ab"], "a": inputs["b"] @ p["ba"]}, s

    def critic(p, s, images, batch, train):
        return {k: images[k] @ p[k] for k in ("a", "b")}, s

    def cycle(fake, batch, regenerate):
        back = regenerate({"a": fake["a"], "b": fake["b"]})  # a -> b -> a, b -> a -> b
        return cycle_weight * (jnp.mean(jnp.abs(back["a"] - batch["a"])) + jnp.mean(jnp.abs(back["b"] - batch["b"])))

    cfg = adversarial.GANOptimConfig(loss="least_squares", ema_decay=0.5)
    step = adversarial.make_step(cfg, generate=generate, critic=critic, generator_inputs=lambda batch, rng: batch,
                                 real=lambda batch: {"a": batch["a"], "b": batch["b"]},
                                 extra_g_losses={"cycle": cycle})
    return cfg, step


def test_extra_generator_losses_and_two_domain_networks():
    k = jax.random.split(jax.random.PRNGKey(1), 6)
    gp = {"ab": jax.random.normal(k[0], (3, 3)), "ba": jax.random.normal(k[1], (3, 3))}
    dp = {"a": jax.random.normal(k[2], (3,)), "b": jax.random.normal(k[3], (3,))}
    batch = {"a": jax.random.normal(k[4], (4, 3)), "b": jax.random.normal(k[5], (4, 3))}
    cfg, step = _two_domain_step(cycle_weight=10.0)
    g_tx, d_tx = adversarial.optimizers(cfg)
    state = adversarial.init_state({"params": gp}, {"params": dp}, g_tx=g_tx, d_tx=d_tx, rng=jax.random.PRNGKey(2))
    new, metrics = jax.jit(step)(state, batch)
    assert set(metrics) == {"d_loss", "d_real", "d_fake", "g_loss", "g_cycle"}

    a, b, wab, wba, da, db = (np.asarray(x, np.float64) for x in (batch["a"], batch["b"], gp["ab"], gp["ba"],
                                                                  dp["a"], dp["b"]))
    # D: least squares summed over the two domains (fakes b = a Wab scored by D_b, a = b Wba by D_a).
    d_ref = sum(0.5 * np.mean((x @ d - 1) ** 2) + 0.5 * np.mean((f @ d) ** 2)
                for x, f, d in ((a, b @ wba, da), (b, a @ wab, db)))
    np.testing.assert_allclose(float(metrics["d_loss"]), d_ref, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["d_real"]), (np.mean(_sigmoid(a @ da)) + np.mean(_sigmoid(b @ db))) / 2,
                               rtol=1e-5)
    # G (after the D update): adversarial terms on the new D plus 10 * the cycle L1.
    da2, db2 = (np.asarray(new.params["discriminator"][x], np.float64) for x in "ab")
    cycle = 10.0 * (np.mean(np.abs(a @ wab @ wba - a)) + np.mean(np.abs(b @ wba @ wab - b)))
    adv = 0.5 * np.mean((b @ wba @ da2 - 1) ** 2) + 0.5 * np.mean((a @ wab @ db2 - 1) ** 2)
    np.testing.assert_allclose(float(metrics["g_cycle"]), cycle, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["g_loss"]), adv + cycle, rtol=1e-5)
    # The cycle term reaches G's gradient: without it, G moves elsewhere.
    _, no_cycle = _two_domain_step(cycle_weight=0.0)
    other, _ = jax.jit(no_cycle)(state, batch)
    assert not np.allclose(other.params["generator"]["ab"], new.params["generator"]["ab"])


_PMAP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxvision.losses import gradient_penalty, per_example_random
    from jaxvision.tasks import adversarial

    assert jax.device_count() == 2, jax.devices()
    out = {}
    # The penalty alone: a per-example critic, 4 examples per device.
    w = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 1))
    critic = lambda x: jnp.sum(jnp.tanh(x * w), axis=(1, 2, 3)) + 0.3 * jnp.sum((x * w) ** 2, axis=(1, 2, 3))
    real = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2, 1))
    fake = jax.random.normal(jax.random.PRNGKey(2), (8, 2, 2, 1))
    rng = jax.random.PRNGKey(3)
    per_device = lambda x: x.reshape(2, 4, *x.shape[1:])
    eps = jax.pmap(lambda _: per_example_random(jax.random.uniform, rng, (4, 1, 1, 1), "d"), axis_name="d")(
        jnp.zeros(2))
    gp = jax.pmap(lambda r, f: jax.lax.pmean(gradient_penalty(critic, r, f, rng, "d"), "d"), axis_name="d")(
        per_device(real), per_device(fake))
    out["eps_differ"] = bool(not np.allclose(eps[0], eps[1]))
    out["eps_global"] = bool(np.array_equal(np.asarray(eps).reshape(8, 1, 1, 1),
                                            jax.random.uniform(rng, (8, 1, 1, 1))))
    out["gp_pmap"] = float(gp[0])
    out["gp_single"] = float(gradient_penalty(critic, real, fake, rng))

    # The shared step with WGAN-GP (linear G and D): pmap over 2 devices vs jit on the global batch.
    def step(axis):
        cfg = adversarial.GANOptimConfig(loss="wgan", gp_weight=10.0)
        z = lambda batch, rng: per_example_random(jax.random.normal, rng, (batch["image"].shape[0], 3), axis)
        return adversarial.make_step(cfg, generate=lambda p, s, z, train: ((z @ p).reshape(-1, 2, 2, 1), s),
                                     critic=lambda p, s, x, batch, train: (jnp.tanh(x.reshape(len(x), -1)) @ p, s),
                                     generator_inputs=z, axis_name=axis)
    g_tx, d_tx = adversarial.optimizers(adversarial.GANOptimConfig())
    state = adversarial.init_state({"params": jax.random.normal(jax.random.PRNGKey(4), (3, 4))},
                                   {"params": jax.random.normal(jax.random.PRNGKey(5), (4,))},
                                   g_tx=g_tx, d_tx=d_tx, rng=jax.random.PRNGKey(6))
    _, m1 = jax.jit(step(None))(state, {"image": real})
    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), state)
    m2 = jax.pmap(lambda s, b: jax.lax.pmean(step("d")(s, b)[1], "d"), axis_name="d")(
        replicated, {"image": per_device(real)})
    out["d_loss_single"], out["d_loss_pmap"] = float(m1["d_loss"]), float(m2["d_loss"][0])
    print("RESULT " + json.dumps(out))
""")


def test_gradient_penalty_draws_differ_per_device_and_match_the_global_batch():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _PMAP_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert out["eps_differ"] and out["eps_global"]
    np.testing.assert_allclose(out["gp_pmap"], out["gp_single"], rtol=1e-5)
    # Float32 reduction order only.
    np.testing.assert_allclose(out["d_loss_pmap"], out["d_loss_single"], rtol=1e-4, atol=1e-5)


def test_linear_lr_decay_over_the_last_steps_in_each_optimizers_own_count():
    import pytest

    from jaxvision import config as config_lib

    base = adversarial.GANOptimConfig(g_learning_rate=2e-4, d_learning_rate=1e-4, n_critic=2)
    # Constant by default: the very optax.adam of a float learning rate (same state, same bits).
    g_tx, _ = adversarial.optimizers(base)
    assert jax.tree_util.tree_structure(g_tx.init({"w": jnp.zeros(3)})) == \
        jax.tree_util.tree_structure(optax.adam(2e-4).init({"w": jnp.zeros(3)}))

    cfg = dataclasses.replace(base, lr_decay_steps=4)
    total = 10  # constant for steps 0..5, then 2e-4 * (1 - k/4) at step 6 + k (the paper's linear decay)
    want_g = [2e-4] * 6 + [2e-4 * (1 - k / 4) for k in range(4)]
    g_lr = adversarial.learning_rate(cfg.g_learning_rate, cfg, total)
    np.testing.assert_allclose([float(g_lr(t)) for t in range(total)], want_g, rtol=1e-6)
    d_lr = adversarial.learning_rate(cfg.d_learning_rate, cfg, total, cfg.n_critic)  # D: 2 updates a step
    want_d = [1e-4 * (1 - max(0, t / 2 - 6) / 4) for t in range(2 * total)]
    np.testing.assert_allclose([float(d_lr(t)) for t in range(2 * total)], want_d, rtol=1e-6)

    # Through Adam: the first update of a parameter is -lr * sign(grad) (eps aside), at the scheduled lr.
    g_tx, _ = adversarial.optimizers(cfg, total)
    grads = {"w": jnp.asarray([3.0, -0.5, 2.0])}
    state = g_tx.init(grads)
    for t in (0, 7, 9):
        state_t = optax.tree_utils.tree_set(state, count=jnp.asarray(t, jnp.int32)) if t else state
        upd, _ = g_tx.update(grads, state_t)
        lr = want_g[t]
        if t:  # count also drives Adam's bias correction: compare with a constant-lr Adam at the same count
            ref_state = optax.tree_utils.tree_set(optax.adam(lr, b1=cfg.b1, b2=cfg.b2).init(grads),
                                                  count=jnp.asarray(t, jnp.int32))
            ref, _ = optax.adam(lr, b1=cfg.b1, b2=cfg.b2).update(grads, ref_state)
        else:
            ref = {"w": -lr * jnp.sign(grads["w"])}
        np.testing.assert_allclose(upd["w"], ref["w"], rtol=1e-5)

    with pytest.raises(config_lib.ConfigError, match="raise total_steps"):
        adversarial.optimizers(cfg, 3)
    with pytest.raises(config_lib.ConfigError, match="needs a run"):
        adversarial.optimizers(cfg)


def test_update_scale_multiplies_the_updates_and_keeps_the_step_at_factor_one():
    """ProGAN's learning-rate decay over the run's steps: `update_scale(step)` multiplies both
    networks' optimizer updates; at factor 1 the step is the unscaled one, bit for bit."""
    def generate(p, s, z, train):
        return z * p["w"], s

    def critic(p, s, images, batch, train):
        return images @ p["v"], s

    cfg = adversarial.GANOptimConfig(loss="wgan", g_learning_rate=1e-2, d_learning_rate=1e-2)
    g_tx, d_tx = adversarial.optimizers(cfg)
    rng = np.random.default_rng(0)
    params = lambda n: {"params": {n: jnp.asarray(rng.normal(size=4), jnp.float32)}}  # noqa: E731
    state = adversarial.init_state(params("w"), params("v"), g_tx=g_tx, d_tx=d_tx, rng=jax.random.PRNGKey(0))
    batch = {"image": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}

    def step(update_scale=None):
        return jax.jit(adversarial.make_step(
            cfg, generate=generate, critic=critic, g_tx=g_tx, d_tx=d_tx, update_scale=update_scale,
            generator_inputs=lambda b, r: jax.random.normal(r, b["image"].shape)))

    plain, _ = step()(state, batch)
    same, _ = step(lambda s: jnp.where(s == 0, 1.0, 0.5))(state, batch)
    assert_tree_equal(same, plain)

    quarter, _ = step(lambda s: 0.25)(state, batch)  # D steps first, on the same inputs: a quarter of its update
    v0 = np.asarray(state.params["discriminator"]["v"])
    np.testing.assert_allclose(np.asarray(quarter.params["discriminator"]["v"]) - v0,
                               0.25 * (np.asarray(plain.params["discriminator"]["v"]) - v0), atol=2e-7)  # ulp of v
    frozen, _ = step(lambda s: 0.0)(plain, batch)  # factor 0: no weight moves, Adam's moments still advance
    assert tree_equal(frozen.params, plain.params)
    assert not np.allclose(frozen.opt_state["generator"][0].mu["w"], plain.opt_state["generator"][0].mu["w"])


def test_lazy_regularization_adds_the_penalties_times_the_interval_at_every_interval_th_step():
    """d_reg_interval=k (StyleGAN2's lazy regularization): at steps that are multiples of k, D's
    gradient is that of the loss with k times each penalty; at the others, that of the loss
    without penalties. Plain SGD (lr 1), so D's update is minus its gradient."""
    import pytest

    from jaxvision import config as config_lib

    def generate(p, s, z, train):
        return z * p["w"], s

    def critic(p, s, images, batch, train):
        return jnp.tanh(images * p["v"]) @ p["u"], s

    rng = np.random.default_rng(0)
    g_vars = {"params": {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}}
    d_vars = {"params": {k: jnp.asarray(rng.normal(size=4), jnp.float32) for k in ("u", "v")}}
    batch = {"image": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}
    sgd = optax.sgd(1.0)
    state0 = adversarial.init_state(g_vars, d_vars, g_tx=sgd, d_tx=sgd, rng=jax.random.PRNGKey(0))

    def d_after(state, **cfg):
        cfg = adversarial.GANOptimConfig(loss="wgan", **cfg)
        step = jax.jit(adversarial.make_step(cfg, generate=generate, critic=critic, g_tx=sgd, d_tx=sgd,
                                             generator_inputs=lambda b, r: jax.random.normal(r, b["image"].shape)))
        return step(state, batch)[0].params["discriminator"]

    for penalty in ({"gp_weight": 10.0}, {"r1_gamma": 2.0}):
        name, weight = next(iter(penalty.items()))
        for step in (0, 1, 3, 8):
            state = state0.replace(step=jnp.asarray(step, jnp.int32))
            lazy = d_after(state, d_reg_interval=4, **penalty)
            want = d_after(state, **{name: 4 * weight if step % 4 == 0 else 0.0})
            assert jax.tree_util.tree_structure(lazy) == jax.tree_util.tree_structure(want)
            for key in want:
                np.testing.assert_allclose(lazy[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {step} {key}")
        # The penalty moves D at all (else the check above could not fail).
        assert not np.allclose(d_after(state0, d_reg_interval=4, **penalty)["v"],
                               d_after(state0)["v"], atol=1e-3)

    for bad in ({"d_reg_interval": 0, "gp_weight": 10.0}, {"d_reg_interval": 4}):
        with pytest.raises(config_lib.ConfigError, match="d_reg_interval"):
            adversarial.optimizers(adversarial.GANOptimConfig(loss="wgan", **bad))


_CPU_REDUCTIONS_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jaxvision.tasks import gan
    from jaxvision.train import parallel

    G, D = gan.build_networks(gan.GANModelConfig(latent_dim=8, g_width=8, d_width=8, upsample="subpixel"),
                              28, 1, None)
    images = np.tanh(np.random.default_rng(0).normal(size=(16, 28, 28, 1))).astype(np.float32)
    out = {}
    for name in sys.argv[2].split(","):
        reductions, form_name = name.split("/")
        task = gan.make_task(G, D, gan.GANOptimConfig(), image_shape=(28, 28, 1), cpu_reductions=reductions)
        form = parallel.make(form_name)
        form.prepare(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
        state = form.init(task.init, jax.random.PRNGKey(0))
        step, batch = form.compile_step(task.train_step, task.compiler_options), form.put_batch({"image": images})
        for _ in range(3):
            state, _ = step(state, batch)
        for i, leaf in enumerate(jax.tree_util.tree_leaves(form.host_state(state))):
            out[f"{name}:{i}"] = np.asarray(leaf)
    np.savez(sys.argv[1], **out)
""")


def test_ynnpack_cpu_reductions_compile_the_step_as_xlas_own_flag_does(tmp_path):
    """cpu_reductions="ynnpack" reaches XLA through the step's own compiler options, in
    both parallel forms: the same bits as the process-wide XLA flag it stands for, and the
    same numbers as XLA's own reductions up to float32 summation order."""
    def run(path, names, xla_flags=""):
        env = {**os.environ, "XLA_FLAGS": xla_flags, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([sys.executable, "-c", _CPU_REDUCTIONS_SCRIPT, str(path), names], env=env,
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return dict(np.load(path))

    ours = run(tmp_path / "ours.npz", "ynnpack/mesh,ynnpack/pmap,xla/mesh")
    flag = run(tmp_path / "flag.npz", "xla/mesh,xla/pmap",
               "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce")
    leaves = sorted({k.split(":")[1] for k in flag}, key=int)
    assert len(leaves) > 10 and {k.split(":")[1] for k in ours} == set(leaves)
    for i in leaves:
        for form in ("mesh", "pmap"):
            np.testing.assert_array_equal(ours[f"ynnpack/{form}:{i}"], flag[f"xla/{form}:{i}"])
        np.testing.assert_allclose(ours[f"ynnpack/mesh:{i}"], ours[f"xla/mesh:{i}"], rtol=2e-3, atol=2e-5)


def test_an_unknown_cpu_reductions_setting_names_the_choices(tmp_path, monkeypatch):
    import pytest

    from jaxvision import config as config_lib

    G, D = gan.build_networks(gan.GANModelConfig(latent_dim=8, g_width=8, d_width=8), 28, 1, None)
    with pytest.raises(config_lib.ConfigError, match=r"cpu_reductions 'mkl'.*\['xla', 'ynnpack'\]"):
        gan.make_task(G, D, gan.GANOptimConfig(), image_shape=(28, 28, 1), cpu_reductions="mkl")
    assert adversarial.compiler_options("xla") is None
    # The experiment fails on it before it reads data, trains a classifier or writes a run folder.
    from jaxvision import data

    def no_data(*args, **kwargs):
        raise AssertionError("read the dataset before checking cpu_reductions")

    monkeypatch.setattr(data, "dataset_info", no_data)
    with pytest.raises(config_lib.ConfigError, match="cpu_reductions 'mkl'"):
        gan.run(dataclasses.replace(gan.GANConfig(), cpu_reductions="mkl"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pmap_step_with_compiler_options_compiles_once_per_batch_shape():
    """The pmap form compiles a step with options from its lowering: a batch of another
    shape gets its own program, as under jit, and each call gives plain pmap's result."""
    from jaxvision.train import parallel

    form = parallel.make("pmap")
    options = adversarial.compiler_options("ynnpack")

    def step_fn(state, batch):
        return state + batch["x"].sum(), {"mean": batch["x"].mean()}

    with_options, plain = form.compile_step(step_fn, options), form.compile_step(step_fn)
    state = form.init(lambda rng: jnp.float32(1.0), jax.random.PRNGKey(0))
    for rows in (4, 6, 4):
        batch = form.put_batch({"x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)})
        want = plain(jax.tree_util.tree_map(jnp.copy, state), batch)  # both donate their state
        got = with_options(state, batch)
        assert tree_equal(got, want)
        state = got[0]
