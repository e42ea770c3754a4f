"""Progressive GAN: its layers against NumPy formulas, fade-in endpoints, the schedule,
exact resume mid-fade, a colour preset on a tiny local tfds dataset, and bad input."""

import dataclasses
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import tree_equal
from jaxvision import config as config_lib
from jaxvision import data
from jaxvision.models import progan as pg
from jaxvision.tasks import adversarial, progan
from jaxvision.train import Checkpointer, loop

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import progan_fashion_mnist  # noqa: E402

RNG = np.random.default_rng(0)


def test_equalized_layers_scale_unit_normal_weights_by_he_constant_at_run_time():
    x = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)
    conv = pg.EqualizedConv(4, 3)
    v = conv.init(jax.random.PRNGKey(0), x)
    w, b = np.asarray(v["params"]["kernel"]), RNG.normal(size=4).astype(np.float32)
    v = {"params": {"kernel": w, "bias": b}}
    ws = w * math.sqrt(2.0 / (3 * 3 * 3))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 5, 5, 4))
    for i in range(5):
        for j in range(5):
            want[:, i, j] = np.einsum("nhwc,hwco->no", xp[:, i:i + 3, j:j + 3], ws)
    np.testing.assert_allclose(conv.apply(v, x), want + b, rtol=1e-5, atol=1e-5)
    big = np.asarray(pg.EqualizedConv(64, 3).init(jax.random.PRNGKey(1), np.zeros((1, 4, 4, 32)))["params"]["kernel"])
    assert abs(big.std() - 1.0) < 0.03 and abs(big.mean()) < 0.03  # stored N(0, 1)
    dense = pg.EqualizedDense(3, gain=1.0)
    h = RNG.normal(size=(2, 6)).astype(np.float32)
    dv = dense.init(jax.random.PRNGKey(2), h)
    np.testing.assert_allclose(dense.apply(dv, h), h @ (np.asarray(dv["params"]["kernel"]) / math.sqrt(6)), rtol=1e-5)
    plain = pg.EqualizedDense(3, equalized=False).init(jax.random.PRNGKey(2), h)["params"]["kernel"]
    np.testing.assert_allclose(plain, np.asarray(dv["params"]["kernel"]) * math.sqrt(2 / 6), rtol=1e-6)


def test_pixel_norm_and_minibatch_stddev_match_numpy():
    x = RNG.normal(size=(8, 3, 3, 5)).astype(np.float32)
    want = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pg.pixel_norm(x), want, rtol=1e-5)
    y = np.asarray(pg.minibatch_stddev(jnp.asarray(x), 4))
    assert y.shape == (8, 3, 3, 6)
    np.testing.assert_array_equal(y[..., :5], x)
    groups = 8 // 4
    for n in range(8):  # example n's group: n % 2 (members m, m + 2, m + 4, m + 6)
        members = x[[g * groups + n % groups for g in range(4)]].astype(np.float64)
        std = np.sqrt(np.mean((members - members.mean(axis=0)) ** 2, axis=0) + 1e-8)
        np.testing.assert_allclose(y[n, ..., 5], np.full((3, 3), std.mean()), rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of its group size"):
        pg.minibatch_stddev(jnp.zeros((6, 2, 2, 1)), 4)


@pytest.fixture(scope="module")
def nets():
    G = pg.Generator(resolution=8, channels=3, latent_dim=8, fmap_base=16, fmap_max=8)
    D = pg.Discriminator(resolution=8, fmap_base=16, fmap_max=8)
    gv = jax.jit(G.init)(jax.random.PRNGKey(0), jnp.zeros((4, 8)))
    dv = jax.jit(D.init)(jax.random.PRNGKey(1), jnp.zeros((4, 8, 8, 3)))
    return G, D, gv, dv


def _perturbed(params, names):
    return {**params, **{n: jax.tree_util.tree_map(lambda p: p + 1.0, params[n]) for n in names}}


def test_fade_in_at_alpha_0_and_1_is_the_lower_and_higher_network_exactly(nets):
    G, D, gv, dv = nets
    g = jax.jit(lambda p, z, a: G.apply({"params": p}, z, 1, a))
    g_low = jax.jit(lambda p, z: G.apply({"params": p}, z, 0))
    d = jax.jit(lambda p, x, a: D.apply({"params": p}, x, 1, a))
    d_low = jax.jit(lambda p, x: D.apply({"params": p}, x, 0))
    z = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 3))
    gp, dp = gv["params"], dv["params"]
    # alpha 0: the 4x4 network (2x nearest-upsampled; D on the 2x2-box-downsampled
    # input), whatever the new block's weights are.
    low = np.asarray(g_low(gp, z))
    for p in (gp, _perturbed(gp, ["block_1_conv0", "block_1_conv1", "to_rgb_1"])):
        np.testing.assert_array_equal(g(p, z, 0.0), low.repeat(2, 1).repeat(2, 2))
    for p in (dp, _perturbed(dp, ["from_rgb_1", "block_1_conv0", "block_1_conv1"])):
        np.testing.assert_array_equal(d(p, x, 0.0), d_low(dp, x.reshape(4, 4, 2, 4, 2, 3).mean(axis=(2, 4))))
    # alpha 1: the 8x8 network; the previous RGB heads no longer matter.
    np.testing.assert_array_equal(g(gp, z, 1.0), g(_perturbed(gp, ["to_rgb_0"]), z, 1.0))
    np.testing.assert_array_equal(d(dp, x, 1.0), d(_perturbed(dp, ["from_rgb_0"]), x, 1.0))
    assert not np.array_equal(g(gp, z, 0.5), g(_perturbed(gp, ["to_rgb_0"]), z, 0.5))
    # in between: the linear blend of the two images
    np.testing.assert_allclose(g(gp, z, 0.25), 0.75 * g(gp, z, 0.0) + 0.25 * g(gp, z, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset, run", [("small", "lr1e-2"), ("long", "long_amd_57500")])
def test_presets_are_the_measured_runs(preset, run):
    """The FIDs the docs quote for --preset small and long are the recorded runs': each preset
    must stay its run's preset plus overrides (re-measure before changing either)."""
    record = os.path.join(os.path.dirname(progan_fashion_mnist.__file__), "sweeps", "results",
                          "progan_ablation.jsonl")
    rows = {r["name"]: r for r in map(json.loads, open(record))}
    measured = config_lib.apply_overrides(progan_fashion_mnist.get_config(rows[run]["preset"]), rows[run]["overrides"])
    assert measured == progan_fashion_mnist.get_config(preset)
    assert measured != progan_fashion_mnist.get_config("default")


def test_phases_alpha_and_images_follow_the_schedule():
    s = progan.ScheduleConfig(fade_images=100, stable_images=60, batch_sizes=(20, 20, 10))
    phases = progan.make_phases(s, 16, 99)
    assert [(p.level, p.fading, p.start, p.steps) for p in phases] == [
        (0, False, 0, 3), (1, True, 3, 5), (1, False, 8, 3), (2, True, 11, 10), (2, False, 21, 6)]
    for step, (level, alpha) in {0: (0, 1.0), 3: (1, 0.0), 5: (1, 0.4), 8: (1, 1.0), 16: (2, 0.5), 26: (2, 1.0)}.items():
        _, lv, a = progan.phase_of(phases, jnp.int32(step))
        assert (int(lv), float(a)) == (level, pytest.approx(alpha))
    assert progan.images_seen(phases, 12) == 3 * 20 + 5 * 20 + 3 * 20 + 10
    assert progan.make_phases(s, 16, 99, total_steps=40)[-1].steps == 19  # longer last phase
    assert [p.fading for p in progan.make_phases(s, 16, 99, fade_in=False)] == [False] * 5
    with pytest.raises(config_lib.ConfigError, match="one positive batch per level"):
        progan.make_phases(dataclasses.replace(s, batch_sizes=(8, 8)), 16, 99)


def test_logged_images_per_second_counts_the_rows_each_level_trains(monkeypatch):
    """The pipeline reads the largest level batch; img/s counts what each step trained."""
    import itertools

    s = progan.ScheduleConfig(fade_images=100, stable_images=60, batch_sizes=(20, 20, 10))
    phases = progan.make_phases(s, 16, 99)
    G, D = progan.build_networks(progan.ProGANModelConfig(resolution=16, latent_dim=8, fmap_base=16, fmap_max=8), 1)
    task = progan.make_task(G, D, progan.ProGANConfig().optim, phases, image_shape=(16, 16, 1))
    clock = itertools.count(0.0, 0.5)  # each reading of the clock: half a second later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    meter = loop._Meter(task.images_seen)
    for step in range(1, 12):  # step 1 compiles (untimed); steps 2-11 train 20 rows, step 12 10
        meter.add({"d_loss": jnp.float32(1.0)}, step)
    meter.add({"d_loss": jnp.float32(1.0)}, 12)
    meter.take()  # clock at 0.5 after the first step, 1.0 now
    assert meter.images_per_second() == (10 * 20 + 10) / 0.5


def test_lr_decay_counts_the_runs_steps_across_optimizer_resets():
    """optim.lr_decay_steps in ProGAN: optax.linear_schedule's factors, in global steps
    (Adam restarts each phase, so its own count cannot carry the decay)."""
    import optax

    factor = progan.linear_decay(40, 19)
    want = optax.linear_schedule(1.0, 0.0, 19, transition_begin=21)
    got = [float(factor(jnp.int32(t))) for t in range(41)]
    np.testing.assert_allclose(got, [float(want(t)) for t in range(41)], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, 1 - np.clip((np.arange(41) - 21) / 19, 0, 1), rtol=1e-6, atol=1e-7)
    assert float(factor(jnp.int32(20))) == 1.0 and float(factor(jnp.int32(39))) == pytest.approx(1 / 19)
    s = progan.ScheduleConfig(fade_images=100, stable_images=60, batch_sizes=(20, 20, 10))
    G, D = progan.build_networks(progan.ProGANModelConfig(resolution=16, latent_dim=8, fmap_base=16, fmap_max=8), 1)
    optim = dataclasses.replace(progan.ProGANConfig().optim, lr_decay_steps=28)
    for bad in (28, -1):
        with pytest.raises(config_lib.ConfigError, match="1 to the run's 27 steps"):
            progan.make_task(G, D, dataclasses.replace(optim, lr_decay_steps=bad), progan.make_phases(s, 16, 99),
                             image_shape=(16, 16, 1))
    progan.make_task(G, D, optim, progan.make_phases(s, 16, 99, total_steps=40), image_shape=(16, 16, 1))


H, W = 20, 16  # non-square, like celeb_a's 218x178


class JaxvisionTestFaces(tfds.core.GeneratorBasedBuilder):
    """A tiny local colour dataset (never downloaded) standing in for celeb_a / cifar10."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(H, W, 3))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(64)}

    def _generate_examples(self, count):
        rng = np.random.default_rng(0)
        for i in range(count):
            yield i, {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8)}


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    data.ensure_prepared("jaxvision_test_faces", path)
    return path


def _tiny(preset, faces_dir, **schedule):
    cfg = progan_fashion_mnist.get_config(preset)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dataset="jaxvision_test_faces", data_dir=faces_dir),
        model=dataclasses.replace(cfg.model, resolution=8, latent_dim=8, fmap_base=16, fmap_max=8),
        schedule=dataclasses.replace(cfg.schedule, **{"fade_images": 32, "stable_images": 16, "batch_sizes": (8, 4),
                                                      **schedule}),
        evaluation=progan.ProGANEvalConfig(num_samples_grid=4, fid_samples=0, phase_fid_samples=0, pr_samples=0),
        global_batch_size=8, progress=False, log_every=2, checkpoint_every=100)  # saves at the last step only


def test_colour_preset_on_a_local_dataset_grows_resumes_mid_fade_and_runs_on_bit_for_bit(faces_dir, tmp_path):
    cfg = _tiny("celeb_a", faces_dir)  # 4x4: steps 0-1; fade to 8x8: 2-9 (batch 4); stabilise: 10-13
    assert cfg.data.augment == "resize_crop"  # the preset's crop of non-square photos
    longer = dataclasses.replace(cfg, total_steps=17)  # the last phase run on (as --preset long does)
    before = progan.compile_stats["count"]
    progan.run(dataclasses.replace(cfg, total_steps=5), tmp_path / "stopped")  # stopped at alpha 3/8
    resumed = progan.run(cfg, tmp_path / "stopped")  # on to the schedule's end, evaluated there
    assert resumed["resumed_from_step"] == 5 and progan.compile_stats["count"] - before == 1  # one step, compiled once
    assert progan.run(longer, tmp_path / "stopped")["resumed_from_step"] == 14  # a finished run, run on
    straight = progan.run(longer, tmp_path / "straight")
    assert progan.compile_stats["count"] - before == 2  # once more for the longer last phase, reused straight
    assert straight["steps"] == 17 and straight["compile_count"] >= 1 and straight["compile_seconds"] > 0
    grids = sorted(p.name for p in (tmp_path / "straight" / "samples").iterdir())
    assert grids == ["phase00_4px_stable_step0000002.png", "phase01_8px_fade_step0000010.png",
                     "phase02_8px_stable_step0000017.png"]
    restored = []
    for run in ("straight", "stopped"):
        c = Checkpointer(tmp_path / run / "checkpoints", save_every=1)
        restored.append(c.restore(_abstract(cfg))[0])
        c.close()
    assert tree_equal(*restored)  # both networks, both optimisers (reset at steps 2 and 10), EMA, step, rng
    assert int(restored[0].step) == 17
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    # alpha = (step - 2) / 8 in the fade: the record at 4 covers steps 2 and 3 (0-based)
    assert [r["train/alpha"] for r in logged if r["step"] == 4] == [pytest.approx(0.0625)]
    for change in ({"fade_images": 16}, {"batch_sizes": (8, 8)}):
        with pytest.raises(config_lib.ConfigError, match="another growth schedule"):
            progan.run(_tiny("celeb_a", faces_dir, **change), tmp_path / "straight")


def test_cpu_reductions_reach_the_steps_compiler_options():
    """The loop compiles the step with the Task's options (tests/test_adversarial.py checks
    that path against XLA's own flag); ProGAN must hand its setting to the Task."""
    G, D = progan.build_networks(progan.ProGANModelConfig(resolution=8, fmap_base=16, fmap_max=8), 1)
    phases = progan.make_phases(progan.ScheduleConfig(fade_images=8, stable_images=8), 8, 4)
    for setting in ("xla", "ynnpack"):
        task = progan.make_task(G, D, progan.ProGANConfig().optim, phases, image_shape=(8, 8, 1),
                                cpu_reductions=setting)
        assert task.compiler_options == adversarial.CPU_REDUCTIONS[setting]
    assert progan.ProGANConfig().cpu_reductions == "xla"  # the default (XLA's own; the Intel runs')


def _abstract(cfg):
    G, D = progan.build_networks(cfg.model, 3)
    task = progan.make_task(G, D, cfg.optim, progan.make_phases(cfg.schedule, 8, 8), image_shape=(8, 8, 3))
    return jax.eval_shape(task.init, jax.random.PRNGKey(cfg.seed))


def test_bad_input_is_refused_before_any_step(faces_dir, tmp_path):
    cfg = _tiny("cifar10", faces_dir)
    with pytest.raises(ValueError, match="power of two"):
        progan.run(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, resolution=24)), tmp_path)
    with pytest.raises(config_lib.ConfigError, match="shows 1,000 images but split 'train' holds 64"):
        progan.run(_tiny("cifar10", faces_dir, fade_images=1000, max_epochs_per_phase=1.0), tmp_path)
    with pytest.raises(config_lib.ConfigError, match="at most 128"):  # cifar10 preset: 2 epochs per phase
        progan.run(_tiny("cifar10", faces_dir, stable_images=200), tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"cpu_reductions 'mkl'.*\['xla', 'ynnpack'\]"):
        progan.run(dataclasses.replace(cfg, cpu_reductions="mkl"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
