"""Progressive GAN (Karras et al. 2018) on the shared loop and the one adversarial step.

The schedule is counted in images: stabilise at 4x4, then for each higher level a fade-in
phase (alpha 0 -> 1) and a stabilise phase. Phases become steps on the host (images per
phase / that level's batch, rounded up); inside the jitted step the phase, the level and
alpha are pure functions of `state.step`, so a run killed mid-fade resumes bit for bit.

One compiled step for the whole run: `lax.switch` on the level picks one of the per-level
steps (each built by `adversarial.make_step` with its level static). Chosen over one
compiled step per level picked on the host because it needs no change to the one loop
(it compiles `train_step` once and the data pipeline reads a fixed batch), the step count
alone decides the branch, and only the taken branch runs (XLA conditional). The price is
compiling every level up front; compile count and time are logged (`compile_stats`).
A branch runs as fast as the same level compiled alone only because the model's
convolutions differentiate into XLA:CPU's canonical layout (`pg.conv2d_same`): JAX's own
convolution gradients ran as naive loops inside a conditional, 30-40x slower at 32 px.
Per-level batch sizes: the pipeline reads the largest, each branch trains on its first
`batch` rows (a static slice), so resume stays exact.

All parameters exist from `init` (see `jaxvision.models.progan`); the optimizer state is
reset at each phase start as in the official code (new blocks would otherwise take ~10x
steps from Adam's near-empty second moments), again as a function of the step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxvision import config as config_lib
from jaxvision.losses import per_example_random
from jaxvision.models import progan as pg
from jaxvision.tasks import adversarial
from jaxvision.tasks.adversarial import D, G
from jaxvision.tasks.progan_schedule import (  # noqa: F401 - part of this task's interface
    Phase, ScheduleConfig, check_dataset_size, images_seen, make_phases, phase_of)
from jaxvision.train import loop


@dataclasses.dataclass(frozen=True)
class ProGANModelConfig:
    resolution: int = 32  # power of two; smaller data is padded to it (Fashion-MNIST 28 -> 32)
    latent_dim: int = 128
    fmap_base: int = 512  # channels at a level: min(fmap_max, fmap_base / 2**level)
    fmap_max: int = 128
    pixel_norm: bool = True  # ablation switches: the paper's Table 1
    equalized_lr: bool = True
    mbstd_group: int = 4  # 0: no minibatch stddev
    fade_in: bool = True  # False: each new block enters at alpha 1 (same images per phase)


def pad_to(images, size: int):
    """Pad [B, h, w, C] images centred to size x size with -1 (black in [-1, 1])."""
    h, w = images.shape[1:3]
    if h == w == size:
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return jnp.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)), constant_values=-1.0)


def downsample_to(images, size: int):
    while images.shape[1] > size:
        images = pg.downsample2x(images)
    return images


def real_at_level(images, level: int, alpha):
    """Reals at the level's size, crossfaded with their 2x2-box-downsampled, 2x-upsampled
    copy while the level fades in (as the official code), so they match G's blend."""
    x = downsample_to(images, pg.level_size(level))
    if level == 0:
        return x
    return pg.blend(alpha, pg.upsample2x(pg.downsample2x(x)), x)


compile_stats = {"count": 0, "seconds": 0.0}
_last_task = None  # (key, Task) of run()'s last task
_listening = []


def _count_compiles():
    """Count XLA compilations of the ProGAN step and their time (jax.monitoring events)."""
    if _listening:
        return

    def listener(event, duration, **kw):
        if event.endswith("backend_compile_duration") and "progan_train_step" in str(kw.get("fun_name", "")):
            compile_stats["count"] += 1
            compile_stats["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    _listening.append(listener)


def linear_decay(total_steps: int, decay_steps: int):
    """step -> learning-rate factor: 1, then linearly to 0 over the last `decay_steps` of
    `total_steps` (optax.linear_schedule's values, in steps rather than optimizer updates)."""
    if not 0 < decay_steps <= total_steps:
        raise config_lib.ConfigError(f"optim.lr_decay_steps={decay_steps} must be 0 (constant learning rates) or "
                                     f"1 to the run's {total_steps} steps: lower it or raise total_steps.")
    begin = total_steps - decay_steps
    # Not optax.linear_schedule itself: jitted, it rounds 1 ulp apart at some steps, and the
    # recorded runs (sweeps/results/progan_ablation.jsonl) used this form.
    return lambda step: 1.0 - jnp.clip((step - begin) / decay_steps, 0.0, 1.0)


def make_task(generator: pg.Generator, discriminator: pg.Discriminator, optim: adversarial.GANOptimConfig,
              phases: Sequence[Phase], *, image_shape, drift_weight: float = 0.001, reset_optimizer: bool = True,
              hooks=(), axis_name: str | None = None, local_fraction: int = 1,
              cpu_reductions: str = "xla") -> loop.Task:
    """The ProGAN task. `image_shape`: the data's (h, w, c), padded to G's resolution in
    the step. `local_fraction`: devices the global batch is split over under pmap (the
    per-level slices are taken of each device's rows). `cpu_reductions`: see
    `adversarial.CPU_REDUCTIONS`."""
    options = adversarial.compiler_options(cpu_reductions)
    _count_compiles()
    # optim.lr_decay_steps counts the run's steps here: Adam restarts at each phase, so the
    # decay scales the updates by the global step instead of riding on Adam's own count.
    decay_steps, optim = optim.lr_decay_steps, dataclasses.replace(optim, lr_decay_steps=0)
    g_tx, d_tx = adversarial.optimizers(optim)
    update_scale = linear_decay(phases[-1].start + phases[-1].steps, decay_steps) if decay_steps else None
    size, levels = generator.resolution, pg.num_levels(generator.resolution)
    read_batch = max(p.batch for p in phases)
    level_batch = {p.level: p.batch for p in phases}
    for k in range(levels):
        if level_batch[k] % local_fraction or read_batch % local_fraction:
            raise config_lib.ConfigError(f"Batch {level_batch[k]} (level {k}) does not split over {local_fraction} "
                                         "devices.")

    def init(rng):
        g_rng, d_rng, state_rng = jax.random.split(rng, 3)
        g_vars = generator.init(g_rng, jnp.zeros((1, generator.latent_dim)))
        d_vars = discriminator.init(d_rng, jnp.zeros((1, size, size, image_shape[-1])))
        return adversarial.init_state(g_vars, d_vars, g_tx=g_tx, d_tx=d_tx, rng=state_rng)

    def level_step(level):
        def alpha_of(batch):
            return batch["alpha"][:, None, None, None]

        def generator_inputs(batch, rng):
            z = per_example_random(jax.random.normal, rng, (batch["image"].shape[0], generator.latent_dim), axis_name)
            return z, alpha_of(batch)

        def generate(g_params, g_stats, inputs, train):
            z, alpha = inputs
            return generator.apply({"params": g_params}, z, level, alpha), g_stats

        def critic(d_params, d_stats, images, batch, train):
            return discriminator.apply({"params": d_params}, images, level, alpha_of(batch)), d_stats

        def drift(real_logits, fake_logits, batch):
            return drift_weight * jnp.mean(jnp.square(real_logits))

        step = adversarial.make_step(
            optim, generate=generate, critic=critic, generator_inputs=generator_inputs,
            real=lambda batch: real_at_level(batch["image"], level, alpha_of(batch)),
            extra_d_losses={"drift": drift} if drift_weight else None, g_tx=g_tx, d_tx=d_tx, axis_name=axis_name,
            update_scale=update_scale)
        rows = level_batch[level] // local_fraction

        def run(state, batch):
            return step(state, jax.tree_util.tree_map(lambda x: x[:rows], batch))
        return run

    branches = [level_step(k) for k in range(levels)]
    starts = jnp.asarray([p.start for p in phases[1:]], jnp.int32)

    def progan_train_step(state, batch):
        _, level, alpha = phase_of(phases, state.step)
        if reset_optimizer:  # Adam's moments and count back to init at each phase start
            fresh = {G: g_tx.init(state.params[G]), D: d_tx.init(state.params[D])}
            new_phase = jnp.any(state.step == starts)
            state = state.replace(opt_state=jax.tree_util.tree_map(
                lambda f, s: jnp.where(new_phase, f, s), fresh, state.opt_state))
        images = pad_to(batch["image"], size)
        batch = {"image": images, "alpha": jnp.broadcast_to(alpha, images.shape[:1])}
        state, metrics = jax.lax.switch(level, branches, state, batch)
        return state, {**metrics, "alpha": alpha, "level": level.astype(jnp.float32)}

    return loop.Task(init=init, train_step=progan_train_step, hooks=tuple(hooks),
                     progress_metrics=("d_loss", "g_loss", "alpha"), images_seen=lambda step: images_seen(phases, step),
                     compiler_options=options)


def sample(generator: pg.Generator, state, z, level: int, alpha=1.0, *, ema: bool = True):
    params = state.extra["ema"] if ema else state.params[G]
    return generator.apply({"params": params}, z, level, alpha)


# --- the run: config, data, phase-end samples and metrics, growth plot ----------------------

@dataclasses.dataclass(frozen=True)
class ProGANDataConfig:
    dataset: str = "fashion_mnist"
    train_split: str = "train"
    data_dir: str | None = None
    # Data larger than model.resolution is brought to it by the pipeline: "resize_crop"
    # (short side, random crop, flip) for non-square photos (celeb_a), "none" resizes.
    augment: str = "none"


@dataclasses.dataclass(frozen=True)
class ProGANEvalConfig:
    num_samples_grid: int = 64
    fid_samples: int = 10_000  # FID of EMA samples at the last step (pytorch-fid protocol); 0: off
    # At every other phase end: FID and improved precision/recall (FID-Inception pool
    # features) of this many EMA samples; 0: off. FID costs ~1 s/image on a 2-core CPU.
    phase_fid_samples: int = 500
    pr_samples: int = 500


@dataclasses.dataclass(frozen=True)
class ProGANConfig(loop.LoopConfig):
    """Seed, batch, steps, logging and checkpoint fields: see loop.LoopConfig. total_steps
    0: the schedule's end; more: the last phase (stabilise at the target) is longer."""

    model: ProGANModelConfig = ProGANModelConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: ProGANDataConfig = ProGANDataConfig()
    optim: adversarial.GANOptimConfig = adversarial.GANOptimConfig(
        loss="wgan", g_learning_rate=1e-3, d_learning_rate=1e-3, b1=0.0, b2=0.99, gp_weight=10.0, ema_decay=0.999)
    drift_weight: float = 0.001  # epsilon_drift * D(x)^2 on reals
    evaluation: ProGANEvalConfig = ProGANEvalConfig()
    global_batch_size: int = 64  # the batch of every level unless schedule.batch_sizes says otherwise
    total_steps: int = 0
    # The train step's CPU reductions, "xla" or "ynnpack" (adversarial.CPU_REDUCTIONS): other
    # bits, the same numbers up to float32 summation order; no effect off the CPU.
    cpu_reductions: str = "xla"


def build_networks(model: ProGANModelConfig, channels: int):
    return (pg.Generator(resolution=model.resolution, channels=channels, latent_dim=model.latent_dim,
                         fmap_base=model.fmap_base, fmap_max=model.fmap_max, pixel_norm=model.pixel_norm,
                         equalized=model.equalized_lr),
            pg.Discriminator(resolution=model.resolution, fmap_base=model.fmap_base, fmap_max=model.fmap_max,
                             mbstd_group=model.mbstd_group, equalized=model.equalized_lr))


def _growth_fields(cfg: ProGANConfig) -> dict:
    d = config_lib.to_dict(cfg)
    d["schedule"].pop("max_epochs_per_phase")  # a data check, not the schedule
    return {"schedule": d["schedule"], "model.resolution": cfg.model.resolution, "model.fade_in": cfg.model.fade_in,
            "global_batch_size": cfg.global_batch_size}


def check_resume(cfg: ProGANConfig, workdir: Path) -> None:
    """A run resumed with another schedule would land in another phase: refuse it."""
    import json

    ckpt, saved = workdir / "checkpoints", workdir / "config.json"
    if not (saved.is_file() and ckpt.is_dir() and any(ckpt.iterdir())):
        return
    before = _growth_fields(config_lib.from_dict(ProGANConfig, json.loads(saved.read_text())))
    now = _growth_fields(cfg)
    changed = sorted(k for k in now if before[k] != now[k])
    if changed:
        raise config_lib.ConfigError(
            f"{workdir} holds a run with another growth schedule ({', '.join(changed)}: {[before[k] for k in changed]} "
            f"then, {[now[k] for k in changed]} now); resuming would land in another phase. Use the run's own "
            "settings or a new --workdir.")


def crop_to(images, h: int, w: int):
    """Undo pad_to: the centre h x w (what the real data looked like)."""
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    return images[:, top:top + h, left:left + w]


def run(cfg: ProGANConfig, workdir) -> dict:
    from jaxvision import data
    from jaxvision.train import parallel
    from jaxvision.train.plots import save_image_grid

    workdir = Path(workdir)
    res = cfg.model.resolution
    pg.num_levels(res)  # a resolution that is not a power of two: refused before any data is read
    adversarial.compiler_options(cfg.cpu_reductions)  # so is an unknown cpu_reductions
    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require("image", purpose="The progressive GAN")
    h, w, c = info.image_shape
    image_size = None if (h <= res and w <= res) else res
    shown = (h, w) if image_size is None else (res, res)  # the size samples are evaluated at
    phases = make_phases(cfg.schedule, res, cfg.global_batch_size, cfg.model.fade_in, cfg.total_steps)
    total = cfg.total_steps or phases[-1].end
    num_train = data.ensure_prepared(cfg.data.dataset, cfg.data.data_dir).info.splits[cfg.data.train_split].num_examples
    check_dataset_size(phases, num_train, cfg.schedule.max_epochs_per_phase, cfg.data.train_split)
    check_resume(cfg, workdir)

    form = parallel.make(cfg.parallel)
    generator, discriminator = build_networks(cfg.model, c)
    sample_fn = jax.jit(lambda state, z, level, alpha: sample(generator, state, z, level, alpha), static_argnums=2)
    z_grid = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0x5A3),
                               (cfg.evaluation.num_samples_grid, cfg.model.latent_dim))
    ends = sorted({p.end for p in phases if p.end < total} | {total})
    primary = jax.process_index() == 0
    evaluators = _Evaluators(cfg, shown, image_size)

    def shown_samples(state, z, level, alpha):
        x = sample_fn(state, z, level, alpha)
        x = jnp.repeat(jnp.repeat(x, res // x.shape[1], axis=1), res // x.shape[2], axis=2)  # nearest, to the target
        return crop_to(x, *shown)

    def phase_end_hook(step, state):  # the loop calls it at `ends` only (its eval_steps)
        index, level, alpha = (int(v) if i < 2 else float(v) for i, v in enumerate(phase_of(phases, step - 1)))
        p = phases[index]
        metrics = {"growth/images_seen": images_seen(phases, step), "growth/phase": index,
                   "growth/level_px": pg.level_size(level), "compile/count": compile_stats["count"],
                   "compile/seconds": compile_stats["seconds"]}
        if primary:
            name = f"phase{index:02d}_{pg.level_size(level)}px_{'fade' if p.fading else 'stable'}_step{step:07d}.png"
            save_image_grid(jax.device_get(shown_samples(state, z_grid, level, alpha)), workdir / "samples" / name)

        def samples(num_images, batch_size):
            for i in range(0, num_images, batch_size):
                z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i),
                                      (batch_size, cfg.model.latent_dim))
                yield shown_samples(state, z, level, alpha)
        metrics.update(evaluators(samples, final=step == total))
        return metrics

    # The step of the last run in this process is reused when nothing it depends on changed,
    # so a resumed or repeated run in the same process does not compile again.
    global _last_task
    task_args = dict(image_shape=(h, w, c) if image_size is None else (res, res, c), drift_weight=cfg.drift_weight,
                     reset_optimizer=cfg.schedule.reset_optimizer, axis_name=form.axis_name,
                     local_fraction=jax.device_count() if form.axis_name else 1, cpu_reductions=cfg.cpu_reductions)
    key = (cfg.model, c, cfg.optim, tuple(phases), tuple(sorted(task_args.items())))
    if _last_task is None or _last_task[0] != key:
        _last_task = (key, make_task(generator, discriminator, cfg.optim, phases, **task_args))
    task = dataclasses.replace(_last_task[1], hooks=(phase_end_hook,))
    read_batch = max(p.batch for p in phases)

    def train_data(start_step):
        return data.train_iterator(cfg.data.dataset, cfg.data.train_split, global_batch_size=read_batch,
                                   seed=cfg.seed, start_step=start_step, data_dir=cfg.data.data_dir,
                                   augment=cfg.data.augment, image_size=image_size, features=("image",))

    results = loop.train(task, workdir=workdir, train_data=train_data, global_batch_size=read_batch,
                         eval_steps=frozenset(ends), parallel_form=form, config=config_lib.to_dict(cfg),
                         **{**cfg.loop_args(), "total_steps": total})
    if primary:
        plot_growth(workdir, phases, total)
    return results


class _Evaluators:
    """FID (and improved precision/recall in FID-Inception pool space) of EMA samples
    through `jaxvision.metrics.evaluators`, built at the first phase end; nothing (said
    once on stderr) without FID-Inception weights."""

    def __init__(self, cfg: ProGANConfig, shown, image_size):
        self.cfg, self.shown, self.image_size = cfg, shown, image_size
        self.built = None

    def _build(self):
        from jaxvision import data
        from jaxvision.metrics import evaluators
        from jaxvision.metrics.fid import FeatureExtractor

        cfg, ev = self.cfg, self.cfg.evaluation
        net_factory = evaluators.fid_inception_or_none("ProGAN: FID and precision/recall")
        if net_factory is None:
            return {}
        net = net_factory()
        extractor = FeatureExtractor(net, batch_size=50)
        reference = f"tfds:{cfg.data.dataset}:{cfg.data.train_split}"
        built = {}
        for key, n in (("phase", ev.phase_fid_samples), ("final", ev.fid_samples or ev.phase_fid_samples)):
            if n:
                built[key] = evaluators.make_evaluator("fid", net_factory=lambda: net, num_images=n,
                                                       reference=reference, metrics=("fid",),
                                                       data_dir=cfg.data.data_dir)
        if ev.pr_samples:
            real = data.eval_batches(cfg.data.dataset, cfg.data.train_split, global_batch_size=50,
                                     data_dir=cfg.data.data_dir, image_size=self.image_size, features=("image",))
            built["pr"] = evaluators.make_evaluator(
                "precision_recall", features=lambda x: extractor.batch(x, (-1.0, 1.0))["pool"], reference=real,
                num_images=ev.pr_samples, batch_size=50)
        return built

    def __call__(self, samples, *, final: bool) -> dict:
        if self.built is None:
            self.built = self._build()
        out = {}
        fid = self.built.get("final" if final else "phase")
        if fid is not None:
            out.update({f"fid/{k}": v for k, v in fid(samples).items()})
        if "pr" in self.built:
            out.update({f"precision_recall/{k}": v for k, v in self.built["pr"](samples).items()})
        return out


def plot_growth(workdir, phases: Sequence[Phase], total: int) -> Path | None:
    """FID against images seen, phase boundaries marked: plots/growth.png (None: no FID logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxvision.train.logging import read_metrics

    rows = [r for r in read_metrics(workdir) if "fid/fid" in r and r["step"] <= total]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([images_seen(phases, r["step"]) / 1000 for r in rows], [r["fid/fid"] for r in rows], "o-")
    for p in phases:
        if p.start < total:
            ax.axvline(images_seen(phases, p.start) / 1000, color="grey", lw=0.6, ls="--" if p.fading else "-")
            ax.text(images_seen(phases, p.start) / 1000, ax.get_ylim()[1], f" {pg.level_size(p.level)}"
                    f"{' fade' if p.fading else ''}", rotation=90, va="top", fontsize=7)
    ax.set_xlabel("thousand images seen")
    ax.set_ylabel("FID (EMA samples)")
    ax.set_title("Progressive growing: FID at phase ends (dashed: fade-in starts)")
    path = Path(workdir) / "plots" / "growth.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
