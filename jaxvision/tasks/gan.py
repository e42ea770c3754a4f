"""DCGAN on the shared loop: its config, its networks' forward functions plugged into the
adversarial step (`jaxvision.tasks.adversarial`), samples, and the evaluators of
`jaxvision.metrics.evaluators` (FD-ViT, FID) fed with EMA samples.

One `TrainState` holds both networks: `params`/`opt_state`/`model_state` are dicts
with "generator" and "discriminator" entries and `extra["ema"]` is the exponential
moving average of G's weights, updated inside the jitted step (not in host Python).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import config as config_lib
from jaxvision.losses import per_example_random
from jaxvision.metrics import evaluators
from jaxvision.tasks import adversarial
from jaxvision.tasks.adversarial import G, GANOptimConfig  # noqa: F401 - GANOptimConfig: part of GANConfig
from jaxvision.train import loop, parallel
from jaxvision.train import state as state_lib
from jaxvision.train.plots import save_image_grid


@dataclasses.dataclass(frozen=True)
class GANModelConfig:
    latent_dim: int = 100
    g_width: int = 64
    d_width: int = 64
    conditional: bool = False
    spectral_norm: bool = False
    image_size: int | None = None  # None: the dataset's own size (28, 32 or 64)
    upsample: str = "transpose"  # G's 2x layers: "transpose", "resize_conv" or "subpixel"
    g_output_conv: bool = False  # G ends in a 3x3 conv at full resolution (models.dcgan.Generator.output_conv)


@dataclasses.dataclass(frozen=True)
class GANDataConfig:
    dataset: str = "fashion_mnist"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    augment: str = "none"


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
    # BatchNorm statistics that EMA samples are drawn with. "recompute": G's EMA weights
    # run in train mode on `ema_stats_samples` fixed noise vectors and keep that batch's
    # statistics. "raw": the raw generator's running averages, which describe other weights
    # and which D steps update too (what runs before this option sampled with).
    ema_batch_stats: str = "recompute"
    ema_stats_samples: int = 1024
    # The train step's CPU reductions: "xla" or "ynnpack" (adversarial.CPU_REDUCTIONS).
    cpu_reductions: str = "xla"


def build_networks(cfg: GANModelConfig, image_size: int, channels: int, num_classes: int | None,
                   axis_name: str | None = None):
    from jaxvision.models import Discriminator, Generator

    classes = num_classes if cfg.conditional else None
    return (
        Generator(image_size=image_size, channels=channels, latent_dim=cfg.latent_dim, width=cfg.g_width,
                  num_classes=classes, axis_name=axis_name, upsample=cfg.upsample,
                  output_conv=cfg.g_output_conv),
        Discriminator(image_size=image_size, channels=channels, width=cfg.d_width, num_classes=classes,
                      spectral_norm=cfg.spectral_norm),
    )


def make_task(generator, discriminator, cfg: GANOptimConfig, *, image_shape, conditional: bool = False,
              hooks=(), axis_name: str | None = None, total_steps: int | None = None,
              cpu_reductions: str = "xla") -> loop.Task:
    """DCGAN on the shared adversarial step. `axis_name`: set by the pmap form (G must be
    built with the same one, for its BatchNorm); gradients are then averaged over it.
    `total_steps`: the run's length (for `cfg.lr_decay_steps`). `cpu_reductions`: see
    adversarial.CPU_REDUCTIONS."""
    g_tx, d_tx = adversarial.optimizers(cfg, total_steps)
    options = adversarial.compiler_options(cpu_reductions)
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
        return adversarial.init_state(g_vars, d_vars, g_tx=g_tx, d_tx=d_tx, rng=state_rng)

    def generator_inputs(batch, rng):
        # z for this step. Under pmap, every device draws the global batch's noise and
        # keeps its own slice, so both parallel forms train on the same z.
        z = per_example_random(jax.random.normal, rng, (batch["image"].shape[0], latent), axis_name)
        return z, labels_of(batch)

    def generate(g_params, g_stats, inputs, train):
        z, y = inputs
        if train:
            images, updates = generator.apply({"params": g_params, "batch_stats": g_stats}, z, y, train=True,
                                              mutable=["batch_stats"])
            return images, updates["batch_stats"]
        return generator.apply({"params": g_params, "batch_stats": g_stats}, z, y, train=False), g_stats

    def critic(d_params, d_stats, x, batch, train):
        y = labels_of(batch)
        if train:
            logits, updates = discriminator.apply({"params": d_params, "batch_stats": d_stats}, x, y, train=True,
                                                  mutable=["batch_stats"])
            return logits, updates.get("batch_stats", d_stats)
        return discriminator.apply({"params": d_params, "batch_stats": d_stats}, x, y, train=False), d_stats

    train_step = adversarial.make_step(cfg, generate=generate, critic=critic, generator_inputs=generator_inputs,
                                       g_tx=g_tx, d_tx=d_tx, axis_name=axis_name)
    # The progress bar shows these (the loop's default looks for a "loss" GANs do not have).
    return loop.Task(init=init, train_step=train_step, hooks=tuple(hooks), progress_metrics=("d_loss", "g_loss"),
                     compiler_options=options)


def sample(generator, state, z, labels=None, *, ema: bool = True):
    """Images from G (its EMA weights by default) in inference mode, with the BatchNorm
    statistics in `state.model_state` (see `with_ema_batch_stats`)."""
    params = state.extra["ema"] if ema else state.params[G]
    return generator.apply({"params": params, "batch_stats": state.model_state[G]}, z, labels, train=False)


EMA_BATCH_STATS = ("recompute", "raw")


def with_ema_batch_stats(generator, state, z, labels=None):
    """`state` with G's BatchNorm statistics replaced by those of its EMA weights.

    The running averages in `state.model_state` belong to the raw weights (and D steps
    update them too), so they mis-normalise the EMA weights' activations. Here the EMA
    weights run once in train mode on the calibration noise `z` (and `labels`); every
    BatchNorm keeps that batch's mean and variance: with momentum 0 the running average
    is exactly the batch statistic.
    """
    calibrate = generator.clone(axis_name=None, bn_momentum=0.0)
    _, updates = calibrate.apply({"params": state.extra["ema"], "batch_stats": state.model_state[G]}, z, labels,
                                 train=True, mutable=["batch_stats"])
    return state.replace(model_state={**state.model_state, G: updates["batch_stats"]})


def ema_sampling_state(generator, cfg: "GANConfig", num_classes: int | None):
    """A jitted `state -> state` that sets the BatchNorm statistics EMA samples are drawn
    with, as `cfg.ema_batch_stats` says (the identity for "raw")."""
    if cfg.ema_batch_stats not in EMA_BATCH_STATS:
        raise config_lib.ConfigError(
            f"ema_batch_stats must be one of {EMA_BATCH_STATS}, got {cfg.ema_batch_stats!r}.")
    if cfg.ema_batch_stats == "raw":
        return lambda state: state
    if cfg.ema_stats_samples < 2:
        raise config_lib.ConfigError(
            f"ema_stats_samples={cfg.ema_stats_samples}: BatchNorm statistics need a batch of at least 2 "
            "(1024 is the default).")
    # Noise of its own (not the grid's nor the evaluation samples'), the same at every call.
    z, labels = fixed_noise(cfg.seed + 0x57A7, cfg.ema_stats_samples, cfg.model.latent_dim, num_classes)
    return jax.jit(lambda state: with_ema_batch_stats(generator, state, z, labels))


def fixed_noise(seed: int, count: int, latent_dim: int, num_classes: int | None):
    """The same z (and labels: one row per class) at every sample step and after resume."""
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A3), (count, latent_dim))
    labels = None if num_classes is None else jnp.arange(count, dtype=jnp.int32) % num_classes
    return z, labels


def run(cfg: GANConfig, workdir, *, classifier_config=None) -> dict:
    """Train and evaluate a GAN as `cfg` says. `classifier_config`: how to train the
    FD-ViT classifier when `cfg.fd.classifier_workdir` holds none."""
    from jaxvision import data

    if cfg.fd.every and (not cfg.sample_every or cfg.fd.every % cfg.sample_every):
        raise config_lib.ConfigError(
            f"fd.every={cfg.fd.every} is not a multiple of sample_every={cfg.sample_every}: FD-ViT runs where "
            "samples are drawn, so it would run only at the end; set fd.every to a multiple of sample_every "
            "(or 0: at the end only).")
    adversarial.compiler_options(cfg.cpu_reductions)  # a bad setting fails before any work
    workdir = Path(workdir)
    needs = ("image", "label") if cfg.model.conditional else ("image",)
    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require(*needs, purpose="The GAN")
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
    sampling_state = ema_sampling_state(generator, cfg, num_classes)
    grid_rows = num_classes or int(np.ceil(np.sqrt(cfg.num_samples_grid)))
    z_grid, y_grid = fixed_noise(cfg.seed, cfg.num_samples_grid, cfg.model.latent_dim, num_classes)
    primary = jax.process_index() == 0
    fd = vit_space_evaluator(cfg, classifier_config, num_classes) if cfg.fd.num_samples else None

    def samples_hook(step, state):
        state = sampling_state(state)
        images = jax.device_get(sample_fn(state, z_grid, y_grid))
        if primary:
            save_image_grid(images, workdir / "samples" / f"samples_{step:07d}.png", nrow=grid_rows)
        metrics = {}
        samples = sample_source(sample_fn, state, seed=cfg.seed, latent_dim=cfg.model.latent_dim,
                                num_classes=num_classes)
        if fd is not None and (step == cfg.total_steps or (cfg.fd.every and step % cfg.fd.every == 0)):
            # The Fréchet distance keeps its "fd_vit/" names; the rest of the ViT space is "vit/".
            metrics.update({f"{'fd_vit' if k in FD_KEYS else 'vit'}/{k}": v for k, v in fd(samples).items()})
        if step == cfg.total_steps and cfg.fd.fid_samples:
            metrics.update({f"fid/{k}": v for k, v in fid_of_samples(cfg, samples).items()})
        return metrics

    task = make_task(generator, discriminator, cfg.optim, image_shape=image_shape,
                     conditional=cfg.model.conditional, hooks=[samples_hook], axis_name=form.axis_name,
                     total_steps=cfg.total_steps, cpu_reductions=cfg.cpu_reductions)
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


def sample_source(sample_fn, state, *, seed: int, latent_dim: int, num_classes: int | None):
    """`samples(num_images, batch_size)` for the evaluators of `jaxvision.metrics.evaluators`."""
    return lambda num_images, batch_size: sample_batches(sample_fn, state, num_images=num_images,
                                                         batch_size=batch_size, seed=seed, latent_dim=latent_dim,
                                                         num_classes=num_classes)


def fid_of_samples(cfg: GANConfig, samples) -> dict:
    """FID (and IS) of EMA samples against the training split, pytorch-fid protocol, when
    FID-Inception weights are installed (`evaluators.fid_evaluator_or_none`: the set-up
    installs them); otherwise nothing (said on stderr). `seconds`: the evaluation's own
    time (Inception at 299 px is slow on a CPU; the real statistics are cached)."""
    fid = evaluators.fid_evaluator_or_none(reference=f"tfds:{cfg.data.dataset}:{cfg.data.train_split}",
                                           num_images=cfg.fd.fid_samples, data_dir=cfg.data.data_dir, timed=True)
    return {} if fid is None else fid(samples)


FD_KEYS = ("ema_samples", "real_test_floor")


def drawn_labels(num_images: int, batch_size: int, *, seed: int, latent_dim: int, num_classes: int) -> np.ndarray:
    """The labels `sample_batches` draws its samples for, in the same order."""
    return np.concatenate([np.asarray(fixed_noise(seed + 1 + i, batch_size, latent_dim, num_classes)[1])
                           for i in range(0, num_images, batch_size)])[:num_images]


def vit_space_evaluator(cfg: GANConfig, classifier_config=None, num_classes: int | None = None):
    """EMA samples scored in the feature space of our own classifier, in one pass: FD-ViT
    next to the real-data floor (test images against the same training images), precision,
    recall, density, coverage, the class histogram and, for a conditional GAN
    (`num_classes` set), the classifier's accuracy on the classes the samples were drawn
    for. The classifier is `cfg.fd.classifier_workdir`'s run, trained first with
    `classifier_config` if that folder holds none."""
    import functools

    from jaxvision import data
    from jaxvision.tasks import classification

    classifier = Path(cfg.fd.classifier_workdir)
    if not (classifier / "config.json").is_file() and classifier_config is None:
        raise FileNotFoundError(
            f"FD-ViT needs a trained classifier run in {classifier} (fd.classifier_workdir): run the "
            "main job (experiments/vit_fashion_mnist.py) first, or set fd.num_samples=0 to skip FD."
        )
    classification.ensure_classifier(classifier, classifier_config, cfg.fd.classifier_steps, purpose="FD-ViT")
    classify, classifier_classes = classification.classifier_fn_from_run(classifier)
    if num_classes is not None and num_classes != classifier_classes:
        raise config_lib.ConfigError(
            f"The classifier in {classifier} has {classifier_classes} classes but the conditional GAN draws "
            f"{num_classes}: point fd.classifier_workdir at a classifier of the GAN's dataset.")

    def real(split):
        return data.eval_batches(cfg.data.dataset, split, global_batch_size=500, data_dir=cfg.data.data_dir)

    drawn = None if num_classes is None else functools.partial(
        drawn_labels, seed=cfg.seed, latent_dim=cfg.model.latent_dim, num_classes=num_classes)
    return evaluators.make_evaluator(
        "classifier", classifier=classify, num_classes=classifier_classes, num_images=cfg.fd.num_samples,
        reference=real(cfg.data.train_split), floor=real(cfg.data.eval_split), batch_size=500,
        drawn_labels=drawn, sample_key=FD_KEYS[0], floor_key=FD_KEYS[1])


def load_generator(workdir):
    """The generator of a GAN run (its config.json and newest checkpoint) as a jitted
    `sample_fn(state, z, labels)` plus the state and config to call it with."""
    import json

    from jaxvision.train import load_params

    config = Path(workdir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"No GAN run in {workdir} (no config.json): pass the --workdir of a GAN run.")
    raw = json.loads(config.read_text())
    cfg = config_lib.from_dict(GANConfig, raw)
    ema = load_params(workdir, collection="extra")["ema"]
    batch_stats = load_params(workdir, collection="model_state")[G]
    channels = image_channels(ema, cfg.model)
    num_classes = ema["label_embed"]["embedding"].shape[0] if "label_embed" in ema else None
    generator, _ = build_networks(cfg.model, cfg.model.image_size, channels, num_classes)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={}, rng=jnp.zeros(2, jnp.uint32),
                                 model_state={G: batch_stats}, extra={"ema": ema})
    state = ema_sampling_state(generator, cfg, num_classes)(state)
    return jax.jit(lambda st, z, y: sample(generator, st, z, y)), state, cfg, num_classes


def image_channels(g_params, cfg: GANModelConfig) -> int:
    """The image channels of a generator, from its output layer's kernel (a sub-pixel layer
    makes 4x as many; a transposed or a full-resolution output conv, as many)."""
    if cfg.g_output_conv or cfg.upsample == "transpose":
        return g_params["to_image"]["kernel"].shape[-1]
    return g_params["to_image"]["conv"]["kernel"].shape[-1] // (4 if cfg.upsample == "subpixel" else 1)


def _checkpoint_source(rest: str, ctx) -> "FeatureSet":  # noqa: F821 - jaxvision.metrics.fid.FeatureSet
    """`checkpoint:WORKDIR` for the FID command line: EMA samples of a GAN run of ours."""
    sample_fn, state, cfg, num_classes = load_generator(rest)
    n = ctx.num_images or 10_000
    samples = sample_source(sample_fn, state, seed=cfg.seed, latent_dim=cfg.model.latent_dim, num_classes=num_classes)
    return ctx.extract(samples(n, ctx.batch_size), value_range=(-1.0, 1.0), num_images=n,
                       meta={"source": f"checkpoint:{rest}"})


def register_checkpoint_source():
    from jaxvision.metrics import sources

    sources.register_source("checkpoint", _checkpoint_source)
