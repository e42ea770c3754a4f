"""GAN training on the shared loop: config, the pure alternating D/G step, samples, FD.

One `TrainState` holds both networks: `params`/`opt_state`/`model_state` are dicts
with "generator" and "discriminator" entries and `extra["ema"]` is the exponential
moving average of G's weights, updated inside the jitted step (not in host Python).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision import config as config_lib
from jaxvision.losses import GAN_LOSSES, gradient_penalty, r1_penalty
from jaxvision.train import loop, parallel
from jaxvision.train import state as state_lib
from jaxvision.train.plots import save_image_grid

G, D = "generator", "discriminator"


@dataclasses.dataclass(frozen=True)
class GANModelConfig:
    latent_dim: int = 100
    g_width: int = 64
    d_width: int = 64
    conditional: bool = False
    spectral_norm: bool = False
    image_size: int | None = None  # None: the dataset's own size (28, 32 or 64)


@dataclasses.dataclass(frozen=True)
class GANDataConfig:
    dataset: str = "fashion_mnist"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    augment: str = "none"


@dataclasses.dataclass(frozen=True)
class GANOptimConfig:
    loss: str = "non_saturating"
    g_learning_rate: float = 2e-4
    d_learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    n_critic: int = 1  # D steps per G step; each on its own slice of the batch
    gp_weight: float = 0.0  # WGAN-GP gradient penalty weight (10 in Gulrajani et al.)
    r1_gamma: float = 0.0  # R1 penalty: gamma/2 * E||grad D(x)||^2 on real data
    ema_decay: float = 0.999


@dataclasses.dataclass(frozen=True)
class FDConfig:
    """Fréchet distance in the feature space of our own Fashion-MNIST ViT ("FD-ViT").

    Not FID: FID needs the Inception network (jaxvision.metrics.fid). The classifier is
    the main job's run; if `classifier_workdir` holds none, one is trained first for
    `classifier_steps` steps with the main job's config.
    """

    classifier_workdir: str = "runs/vit_fashion_mnist"
    classifier_steps: int = 1000  # only used when the classifier must be trained first
    num_samples: int = 10_000
    every: int = 0  # 0: at the end only
    # FID (pytorch-fid protocol) at the end, when the FID-Inception weights are present
    # (jaxvision.pretrained.inception); 0 turns it off. Slow on CPU (a few img/s).
    fid_samples: int = 10_000


@dataclasses.dataclass(frozen=True)
class GANConfig(loop.LoopConfig):
    """Seed, batch, steps, logging and checkpoint fields: see loop.LoopConfig."""

    model: GANModelConfig = GANModelConfig()
    data: GANDataConfig = GANDataConfig()
    optim: GANOptimConfig = GANOptimConfig()
    fd: FDConfig = FDConfig()
    global_batch_size: int = 64  # images per D step (the pipeline reads n_critic times this)
    total_steps: int = 3000
    sample_every: int = 500
    num_samples_grid: int = 64


def build_networks(cfg: GANModelConfig, image_size: int, channels: int, num_classes: int | None,
                   axis_name: str | None = None):
    from jaxvision.models import Discriminator, Generator

    classes = num_classes if cfg.conditional else None
    return (
        Generator(image_size=image_size, channels=channels, latent_dim=cfg.latent_dim, width=cfg.g_width,
                  num_classes=classes, axis_name=axis_name),
        Discriminator(image_size=image_size, channels=channels, width=cfg.d_width, num_classes=classes,
                      spectral_norm=cfg.spectral_norm),
    )


def make_task(generator, discriminator, cfg: GANOptimConfig, *, image_shape, conditional: bool = False,
              hooks=(), axis_name: str | None = None) -> loop.Task:
    """`axis_name`: set by the pmap form (G must be built with the same one, for its
    BatchNorm); gradients are then averaged over that axis."""
    if cfg.loss not in GAN_LOSSES:
        raise config_lib.ConfigError(f"Unknown GAN loss {cfg.loss!r}; choose one of {sorted(GAN_LOSSES)}.")
    d_loss_fn, g_loss_fn = GAN_LOSSES[cfg.loss]
    g_tx = optax.adam(cfg.g_learning_rate, b1=cfg.b1, b2=cfg.b2)
    d_tx = optax.adam(cfg.d_learning_rate, b1=cfg.b1, b2=cfg.b2)
    latent = generator.latent_dim

    def labels_of(batch):
        if not conditional:
            return None
        if "label" not in batch:
            raise ValueError("A conditional GAN needs labelled batches ('label'); use a labelled dataset.")
        return batch["label"]

    def init(rng):
        g_rng, d_rng, state_rng = jax.random.split(rng, 3)
        z = jnp.zeros((1, latent))
        y = jnp.zeros((1,), jnp.int32) if conditional else None
        g_vars = generator.init(g_rng, z, y, train=False)
        d_vars = discriminator.init(d_rng, jnp.zeros((1, *image_shape)), y, train=False)
        params = {G: g_vars["params"], D: d_vars["params"]}
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={G: g_tx.init(params[G]), D: d_tx.init(params[D])},
            rng=state_rng,
            model_state={G: g_vars.get("batch_stats", {}), D: d_vars.get("batch_stats", {})},
            extra={"ema": params[G]},
        )

    def generate(g_params, g_stats, z, y, train):
        if train:
            images, updates = generator.apply({"params": g_params, "batch_stats": g_stats}, z, y, train=True,
                                              mutable=["batch_stats"])
            return images, updates["batch_stats"]
        return generator.apply({"params": g_params, "batch_stats": g_stats}, z, y, train=False), g_stats

    def critic(d_params, d_stats, x, y, train):
        if train:
            logits, updates = discriminator.apply({"params": d_params, "batch_stats": d_stats}, x, y, train=True,
                                                  mutable=["batch_stats"])
            return logits, updates.get("batch_stats", d_stats)
        return discriminator.apply({"params": d_params, "batch_stats": d_stats}, x, y, train=False), d_stats

    def d_step(state, real, y, rng):
        z_rng, gp_rng = jax.random.split(rng)
        z = noise(z_rng, real.shape[0])
        fake, g_stats = generate(state.params[G], state.model_state[G], z, y, train=True)
        fake = jax.lax.stop_gradient(fake)

        def loss_fn(d_params):
            real_logits, d_stats = critic(d_params, state.model_state[D], real, y, train=True)
            fake_logits, d_stats = critic(d_params, d_stats, fake, y, train=True)
            loss = d_loss_fn(real_logits, fake_logits)
            frozen_critic = lambda x: critic(d_params, d_stats, x, y, train=False)[0]  # noqa: E731
            if cfg.gp_weight:
                loss = loss + cfg.gp_weight * gradient_penalty(frozen_critic, real, fake, gp_rng)
            if cfg.r1_gamma:
                loss = loss + 0.5 * cfg.r1_gamma * r1_penalty(frozen_critic, real)
            return loss, (d_stats, real_logits, fake_logits)

        (loss, (d_stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params[D])
        grads = _mean_over(grads, axis_name)
        updates, d_opt = d_tx.update(grads, state.opt_state[D], state.params[D])
        state = state.replace(
            params={**state.params, D: optax.apply_updates(state.params[D], updates)},
            opt_state={**state.opt_state, D: d_opt},
            model_state={G: g_stats, D: d_stats},
        )
        return state, {
            "d_loss": loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),  # D(x)
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),  # D(G(z)) before the G step
        }

    def g_step(state, batch_size, y, rng):
        z = noise(rng, batch_size)

        def loss_fn(g_params):
            fake, g_stats = generate(g_params, state.model_state[G], z, y, train=True)
            logits, _ = critic(state.params[D], state.model_state[D], fake, y, train=False)
            return g_loss_fn(logits), g_stats

        (loss, g_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params[G])
        grads = _mean_over(grads, axis_name)
        updates, g_opt = g_tx.update(grads, state.opt_state[G], state.params[G])
        g_params = optax.apply_updates(state.params[G], updates)
        # EMA with a warm-up (as TF's ExponentialMovingAverage with num_updates): early
        # averages would otherwise be dominated by the random initial weights.
        decay = jnp.minimum(cfg.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, state.extra["ema"], g_params)
        state = state.replace(
            params={**state.params, G: g_params},
            opt_state={**state.opt_state, G: g_opt},
            model_state={**state.model_state, G: g_stats},
            extra={**state.extra, "ema": ema},
        )
        return state, {"g_loss": loss}

    def noise(rng, batch_size):
        """z for this step. Under pmap, every device draws the global batch's noise and
        keeps its own slice, so both parallel forms train on the same z."""
        if axis_name is None:
            return jax.random.normal(rng, (batch_size, latent))
        devices = jax.lax.psum(1, axis_name)
        z = jax.random.normal(rng, (devices * batch_size, latent))
        return jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(axis_name) * batch_size, batch_size)

    def train_step(state, batch):
        images, y = batch["image"], labels_of(batch)
        n = images.shape[0] // cfg.n_critic
        metrics = {}
        for i in range(cfg.n_critic):  # unrolled: n_critic is small and static
            part = slice(i * n, (i + 1) * n)
            state, metrics = d_step(state, images[part], None if y is None else y[part], state.step_rng(i))
        state, g_metrics = g_step(state, n, None if y is None else y[:n], state.step_rng(cfg.n_critic))
        return state.replace(step=state.step + 1), {**metrics, **g_metrics}

    return loop.Task(init=init, train_step=train_step, hooks=tuple(hooks))


def _mean_over(grads, axis_name):
    return grads if axis_name is None else jax.lax.pmean(grads, axis_name)


def sample(generator, state, z, labels=None, *, ema: bool = True):
    """Images from G (its EMA weights by default) in inference mode."""
    params = state.extra["ema"] if ema else state.params[G]
    return generator.apply({"params": params, "batch_stats": state.model_state[G]}, z, labels, train=False)


def quantize(images):
    """[-1, 1] floats -> the uint8 grid real images come from -> back to [-1, 1], so
    generated and real images reach the feature network the same way."""
    pixels = jnp.round(jnp.clip((images + 1.0) * 127.5, 0, 255))
    return pixels / 127.5 - 1.0


def fixed_noise(seed: int, count: int, latent_dim: int, num_classes: int | None):
    """The same z (and labels: one row per class) at every sample step and after resume."""
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A3), (count, latent_dim))
    labels = None if num_classes is None else jnp.arange(count, dtype=jnp.int32) % num_classes
    return z, labels


def run(cfg: GANConfig, workdir, *, classifier_config=None) -> dict:
    """Train and evaluate a GAN as `cfg` says. `classifier_config`: how to train the
    FD-ViT classifier when `cfg.fd.classifier_workdir` holds none."""
    from jaxvision import data

    workdir = Path(workdir)
    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir)
    h, w, c = info.image_shape
    size = cfg.model.image_size or h
    if size != h or h != w:
        raise config_lib.ConfigError(
            f"Dataset {cfg.data.dataset!r} has {h}x{w} images; the DCGAN generator produces square "
            f"images of 28, 32 or 64 px: use a dataset of that size or set model.image_size to {h}."
        )
    image_shape = (size, size, c)
    # Recorded in config.json, so the run's generator can be rebuilt from it alone.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_size=size))
    num_classes = info.num_classes if cfg.model.conditional else None
    form = parallel.make(cfg.parallel)
    generator, discriminator = build_networks(cfg.model, size, c, num_classes, axis_name=form.axis_name)
    sample_fn = jax.jit(lambda state, z, y: sample(generator, state, z, y))
    grid_rows = num_classes or int(np.ceil(np.sqrt(cfg.num_samples_grid)))
    z_grid, y_grid = fixed_noise(cfg.seed, cfg.num_samples_grid, cfg.model.latent_dim, num_classes)
    primary = jax.process_index() == 0
    fd = _FDEvaluator(cfg, sample_fn, num_classes, classifier_config) if cfg.fd.num_samples else None

    def samples_hook(step, state):
        images = jax.device_get(sample_fn(state, z_grid, y_grid))
        if primary:
            save_image_grid(images, workdir / "samples" / f"samples_{step:07d}.png", nrow=grid_rows)
        metrics = {}
        if fd is not None and (step == cfg.total_steps or (cfg.fd.every and step % cfg.fd.every == 0)):
            metrics.update(fd(state))
        if step == cfg.total_steps and cfg.fd.fid_samples:
            metrics.update(fid_of_samples(cfg, sample_fn, state, num_classes))
        return metrics

    task = make_task(generator, discriminator, cfg.optim, image_shape=image_shape,
                     conditional=cfg.model.conditional, hooks=[samples_hook], axis_name=form.axis_name)
    read_batch = cfg.global_batch_size * cfg.optim.n_critic

    def train_data(start_step):
        return data.train_iterator(cfg.data.dataset, cfg.data.train_split, global_batch_size=read_batch,
                                   seed=cfg.seed, start_step=start_step, data_dir=cfg.data.data_dir,
                                   augment=cfg.data.augment)

    results = loop.train(
        task, workdir=workdir, train_data=train_data, global_batch_size=read_batch, eval_every=cfg.sample_every,
        parallel_form=form, config=config_lib.to_dict(cfg), **cfg.loop_args(),
    )
    return results


def sample_batches(sample_fn, state, *, num_images: int, batch_size: int, seed: int, latent_dim: int,
                   num_classes: int | None):
    """EMA samples for evaluation, on noise of their own (not the grid's), class-balanced."""
    for i in range(0, num_images, batch_size):
        z, y = fixed_noise(seed + 1 + i, batch_size, latent_dim, num_classes)
        yield sample_fn(state, z, y)


def fid_of_samples(cfg: GANConfig, sample_fn, state, num_classes) -> dict:
    """FID (and IS) of EMA samples against the training split, pytorch-fid protocol, when
    the FID-Inception weights are installed; otherwise nothing (said once on stderr)."""
    from jaxvision.metrics import sources
    from jaxvision.metrics.fid import compute_metrics, default_stats_cache_dir
    from jaxvision.pretrained.inception import default_weights_path, fid_inception

    if not default_weights_path().is_file():
        print(f"FID skipped: no FID-Inception weights at {default_weights_path()} "
              "(see README: FID, Inception Score and KID).", file=sys.stderr)
        return {}
    n = cfg.fd.fid_samples
    ctx = sources.SourceContext(net_factory=fid_inception, num_images=n, need_features=True,
                                cache_dir=default_stats_cache_dir(), data_dir=cfg.data.data_dir)
    real = sources.resolve(f"tfds:{cfg.data.dataset}:{cfg.data.train_split}", ctx)
    fake = ctx.extract(sample_batches(sample_fn, state, num_images=n, batch_size=ctx.batch_size, seed=cfg.seed,
                                      latent_dim=cfg.model.latent_dim, num_classes=num_classes),
                       value_range=(-1.0, 1.0), num_images=n)
    result = compute_metrics(fake, real, ("fid", "is"))
    return {f"fid/{k}": v for k, v in result.items() if isinstance(v, (int, float))}


def load_generator(workdir):
    """The generator of a GAN run (its config.json and newest checkpoint) as a jitted
    `sample_fn(state, z, labels)` plus the state and config to call it with."""
    import json

    from jaxvision.train import load_params

    raw = json.loads((Path(workdir) / "config.json").read_text())
    cfg = config_lib.from_dict(GANConfig, raw)
    ema = load_params(workdir, collection="extra")["ema"]
    batch_stats = load_params(workdir, collection="model_state")[G]
    channels = ema["to_image"]["kernel"].shape[-1]
    num_classes = ema["label_embed"]["embedding"].shape[0] if "label_embed" in ema else None
    generator, _ = build_networks(cfg.model, cfg.model.image_size, channels, num_classes)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={}, rng=jnp.zeros(2, jnp.uint32),
                                 model_state={G: batch_stats}, extra={"ema": ema})
    return jax.jit(lambda st, z, y: sample(generator, st, z, y)), state, cfg, num_classes


def _checkpoint_source(rest: str, ctx) -> "FeatureSet":  # noqa: F821 - jaxvision.metrics.fid.FeatureSet
    """`checkpoint:WORKDIR` for the FID command line: EMA samples of a GAN run of ours."""
    sample_fn, state, cfg, num_classes = load_generator(rest)
    n = ctx.num_images or 10_000
    batches = sample_batches(sample_fn, state, num_images=n, batch_size=ctx.batch_size, seed=cfg.seed,
                             latent_dim=cfg.model.latent_dim, num_classes=num_classes)
    return ctx.extract(batches, value_range=(-1.0, 1.0), num_images=n, meta={"source": f"checkpoint:{rest}"})


def register_checkpoint_source():
    from jaxvision.metrics import sources

    sources.register_source("checkpoint", _checkpoint_source)


class _FDEvaluator:
    """FD-ViT of EMA samples against training images, next to the real-data floor
    (test images against the same training images)."""

    def __init__(self, cfg: GANConfig, sample_fn, num_classes, classifier_config):
        from jaxvision import data
        from jaxvision.tasks import classification

        self.cfg, self.sample_fn, self.num_classes = cfg, sample_fn, num_classes
        classifier = Path(cfg.fd.classifier_workdir)
        if not (classifier / "config.json").is_file():
            if classifier_config is None:
                raise FileNotFoundError(
                    f"FD-ViT needs a trained classifier run in {classifier} (fd.classifier_workdir): run the "
                    "main job (experiments/vit_fashion_mnist.py) first, or set fd.num_samples=0 to skip FD."
                )
            print(f"FD-ViT: no classifier in {classifier}; training one for {cfg.fd.classifier_steps} steps first.")
            classification.run(dataclasses.replace(classifier_config, total_steps=cfg.fd.classifier_steps),
                               classifier)
        self.features = classification.feature_fn_from_run(classifier)
        self.classifier = str(classifier)
        n = cfg.fd.num_samples

        def real_features(split):
            """Features of the first `n` images of `split` (fewer if the split is smaller)."""
            feats, count = [], 0
            for b in data.eval_batches(cfg.data.dataset, split, global_batch_size=500, data_dir=cfg.data.data_dir):
                feats.append(np.asarray(self.features(b["image"]))[b["mask"]])
                count += len(feats[-1])
                if count >= n:
                    break
            return np.concatenate(feats)[:n]

        from jaxvision.metrics import feature_statistics, frechet_distance

        self._stats, self._fd = feature_statistics, frechet_distance
        self.train_stats = feature_statistics(real_features(cfg.data.train_split))
        self.floor = frechet_distance(*self.train_stats, *feature_statistics(real_features(cfg.data.eval_split)))

    def __call__(self, state) -> dict:
        n = self.cfg.fd.num_samples
        feats = [np.asarray(self.features(quantize(images))) for images in sample_batches(
            self.sample_fn, state, num_images=n, batch_size=500, seed=self.cfg.seed,
            latent_dim=self.cfg.model.latent_dim, num_classes=self.num_classes)]
        fake_stats = self._stats(np.concatenate(feats)[:n])
        return {"fd_vit/ema_samples": self._fd(*self.train_stats, *fake_stats),
                "fd_vit/real_test_floor": self.floor}
