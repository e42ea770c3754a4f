"""pix2pix (Isola et al., 2017) for inpainting, on the shared adversarial step.

G is a U-Net fed the masked image and the hole as one more channel; its output is
pasted into the hole (``completed = masked * (1 - hole) + G * hole``: the known pixels
are kept exactly). D is a PatchGAN conditioned on the same input (concatenated), shown
(input, real image) against (input, completed image). G's loss: the non-saturating GAN
loss + 100 x L1(completed, target) (the L1 a mean over all pixels, as in pix2pix, so on
the known pixels it is 0); D's loss is halved (``d_loss_weight = 0.5``: D's gradient is
scaled by it before Adam, which is what halving the loss does to the update; the logged
``d_loss`` is the unhalved one); Adam 2e-4, b1 0.5; N(0, 0.02) weights.

``adversarial=False`` trains the same U-Net on L1 alone, the ablation the experiment
compares with: the same step, data, seed and networks, but D's logits reach G's loss
through ``stop_gradient``, so G's gradient is the L1's only (D still trains and is logged;
``g_loss`` then includes a GAN term G does not learn from).

Batches are feature dicts with "masked", "hole" and "target" (``jaxvision.data.masks``).
Evaluation on the test split (``test/hole_l1``, ``test/hole_psnr``, ``test/ssim``; see
``jaxvision.metrics.image_quality``) uses G's own weights with BatchNorm's running
averages and no dropout, so a completion is a function of its input.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision import config as config_lib
from jaxvision.metrics.image_quality import inpainting_metrics
from jaxvision.tasks import adversarial
from jaxvision.tasks.adversarial import D, G, GANOptimConfig
from jaxvision.train import loop, parallel
from jaxvision.train.plots import save_image_grid

INPUT_KEYS = ("masked", "hole", "target")


@dataclasses.dataclass(frozen=True)
class Pix2PixModelConfig:
    g_width: int = 64
    d_width: int = 64
    g_depth: int | None = None  # None: down to 1x1 (models.unet.depth_for_image_size)
    d_layers: int | None = None  # None: sized by the image (models.patchgan.layers_for_image_size)
    dropout: float = 0.5
    norm: str = "batch"
    upsample: str = "transpose"  # G's decoder: "transpose" (the paper's), "resize_conv", "subpixel"
    image_size: int | None = None  # recorded by run(): the dataset's size
    channels: int | None = None  # recorded by run()


@dataclasses.dataclass(frozen=True)
class InpaintDataConfig:
    dataset: str = "fashion_mnist"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    mask_kind: str = "mixed"  # see jaxvision.data.masks.KINDS
    mask_seed: int = 0
    eval_batch_size: int = 500


@dataclasses.dataclass(frozen=True)
class Pix2PixConfig(loop.LoopConfig):
    model: Pix2PixModelConfig = Pix2PixModelConfig()
    data: InpaintDataConfig = InpaintDataConfig()
    optim: GANOptimConfig = GANOptimConfig()
    l1_weight: float = 100.0
    d_loss_weight: float = 0.5
    adversarial: bool = True  # False: the same U-Net trained on L1 alone
    global_batch_size: int = 64
    total_steps: int = 3000
    eval_every: int = 1000
    num_samples_grid: int = 16


def build_networks(cfg: Pix2PixModelConfig, image_size: int, channels: int):
    from jaxvision.models.patchgan import PatchGAN
    from jaxvision.models.unet import UNet

    return (UNet(image_size=image_size, out_channels=channels, width=cfg.g_width, depth=cfg.g_depth,
                 dropout=cfg.dropout, norm=cfg.norm, upsample=cfg.upsample),
            PatchGAN(image_size=image_size, width=cfg.d_width, n_layers=cfg.d_layers, norm=cfg.norm))


def model_input(batch):
    """G's input and D's condition: the masked image with the hole as one more channel."""
    return jnp.concatenate([batch["masked"], batch["hole"].astype(batch["masked"].dtype)], axis=-1)


def paste(raw, batch):
    """G's output in the hole, the known pixels kept."""
    hole = batch["hole"].astype(raw.dtype)
    return batch["masked"] * (1 - hole) + raw * hole


def complete(generator, params, batch_stats, batch):
    """Completed images (inference: running BatchNorm statistics, no dropout)."""
    raw = generator.apply({"params": params, "batch_stats": batch_stats}, model_input(batch), train=False)
    return paste(raw, batch)


def make_task(generator, discriminator, cfg: GANOptimConfig, *, image_shape, l1_weight: float = 100.0,
              d_loss_weight: float = 0.5, adversarial_loss: bool = True, hooks=(),
              axis_name: str | None = None, total_steps: int | None = None) -> loop.Task:
    g_tx, d_adam = adversarial.optimizers(cfg, total_steps)
    d_tx = optax.chain(optax.scale(d_loss_weight), d_adam)  # = D's loss times d_loss_weight
    h, w, c = image_shape

    def init(rng):
        g_rng, d_rng, state_rng = jax.random.split(rng, 3)
        x = jnp.zeros((1, h, w, c + 1))
        g_vars = generator.init(g_rng, x, train=False)
        d_vars = discriminator.init(d_rng, jnp.zeros((1, h, w, c)), x, train=False)
        return adversarial.init_state(g_vars, d_vars, g_tx=g_tx, d_tx=d_tx, rng=state_rng)

    def generator_inputs(batch, rng):
        # The dropout key rides along, so `regenerate` and the D step's G call are keyed too.
        return {"masked": batch["masked"], "hole": batch["hole"], "dropout": rng}

    def generate(g_params, g_stats, inputs, train):
        variables = {"params": g_params, "batch_stats": g_stats}
        if train:
            raw, updates = generator.apply(variables, model_input(inputs), train=True, mutable=["batch_stats"],
                                           rngs={"dropout": inputs["dropout"]})
            return paste(raw, inputs), updates["batch_stats"]
        return paste(generator.apply(variables, model_input(inputs), train=False), inputs), g_stats

    def critic(d_params, d_stats, images, batch, train):
        variables = {"params": d_params, "batch_stats": d_stats}
        if train:
            logits, updates = discriminator.apply(variables, images, model_input(batch), train=True,
                                                  mutable=["batch_stats"])
            return logits, updates.get("batch_stats", d_stats)
        logits = discriminator.apply(variables, images, model_input(batch), train=False)
        # train=False is G's step: without the adversarial loss, G gets no gradient from D.
        return (logits if adversarial_loss else jax.lax.stop_gradient(logits)), d_stats

    def l1(fake, batch, regenerate):
        return l1_weight * jnp.mean(jnp.abs(fake - batch["target"]))

    train_step = adversarial.make_step(cfg, generate=generate, critic=critic, generator_inputs=generator_inputs,
                                       real=lambda batch: batch["target"], extra_g_losses={"l1": l1},
                                       g_tx=g_tx, d_tx=d_tx, axis_name=axis_name)

    def eval_step(state, batch):
        done = complete(generator, state.params[G], state.model_state[G], batch)
        valid = batch["mask"].astype(jnp.float32)  # False on the padding of the last batch
        per_image = inpainting_metrics(done, batch["target"], batch["hole"])
        return {**{k: jnp.sum(v * valid) for k, v in per_image.items()}, "count": jnp.sum(valid)}

    return loop.Task(init=init, train_step=train_step, eval_step=eval_step, hooks=tuple(hooks),
                     progress_metrics=("d_loss", "g_l1"))


def _with_masks(batches, data_cfg: InpaintDataConfig, first_index: int):
    from jaxvision.data.masks import inpainting_batches

    for batch in inpainting_batches(batches, kind=data_cfg.mask_kind, seed=data_cfg.mask_seed,
                                    first_index=first_index):
        yield {k: v for k, v in batch.items() if k in INPUT_KEYS or k == "mask"}


def eval_batches(data_cfg: InpaintDataConfig, num_images: int | None = None):
    """The eval split with its holes (the i-th image always gets mask index i), in order;
    `num_images`: its first ones only."""
    from jaxvision import data

    split = data_cfg.eval_split
    if num_images is not None and "[" not in split:
        split = f"{split}[:{num_images}]"
    batch = data_cfg.eval_batch_size if num_images is None else min(num_images, data_cfg.eval_batch_size)
    batches = _with_masks(data.eval_batches(data_cfg.dataset, split, global_batch_size=batch,
                                            data_dir=data_cfg.data_dir), data_cfg, 0)
    if num_images is None:
        return batches
    return _first(batches, num_images)


def _first(batches, n):
    for batch in batches:
        take = min(n, len(batch["target"]))
        yield {k: v[:take] for k, v in batch.items()}
        n -= take
        if n <= 0:
            return


def run(cfg: Pix2PixConfig, workdir) -> dict:
    """Train and evaluate pix2pix inpainting as `cfg` says."""
    from jaxvision import data

    workdir = Path(workdir)
    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require("image", purpose="Inpainting")
    h, w, c = info.image_shape
    if h != w:
        raise config_lib.ConfigError(f"Dataset {cfg.data.dataset!r} has {h}x{w} images; pix2pix here takes "
                                     "square ones (resize them first).")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_size=h, channels=c))
    form = parallel.make(cfg.parallel)
    generator, discriminator = build_networks(cfg.model, h, c)
    complete_fn = jax.jit(lambda state, batch: complete(generator, state.params[G], state.model_state[G], batch))
    grid_batch = next(eval_batches(cfg.data, cfg.num_samples_grid))
    primary = jax.process_index() == 0

    def samples_hook(step, state):
        if primary:  # rows of: masked input | completed | target
            done = np.asarray(complete_fn(state, grid_batch))
            grid = np.concatenate([grid_batch["masked"], done, grid_batch["target"]], axis=2)
            save_image_grid(grid, workdir / "samples" / f"samples_{step:07d}.png", nrow=4)
        return {}

    task = make_task(generator, discriminator, cfg.optim, image_shape=(h, w, c), l1_weight=cfg.l1_weight,
                     d_loss_weight=cfg.d_loss_weight, adversarial_loss=cfg.adversarial, hooks=[samples_hook],
                     axis_name=form.axis_name, total_steps=cfg.total_steps)

    def train_data(start_step):
        it = data.train_iterator(cfg.data.dataset, cfg.data.train_split, global_batch_size=cfg.global_batch_size,
                                 seed=cfg.seed, start_step=start_step, data_dir=cfg.data.data_dir)
        # Mask index = the example's position in the run: a resumed run draws the same holes.
        return _with_masks(it, cfg.data, start_step * cfg.global_batch_size)

    return loop.train(task, workdir=workdir, train_data=train_data, global_batch_size=cfg.global_batch_size,
                      eval_data=lambda: eval_batches(cfg.data), eval_every=cfg.eval_every, parallel_form=form,
                      config=config_lib.to_dict(cfg), **cfg.loop_args())


def recompute_batch_stats(generator, params, batch_stats, batches):
    """G's BatchNorm statistics recomputed for `params` over `batches` (equal-sized masked
    batches), as inference runs G: without dropout. The running averages a run keeps belong
    to its raw weights (seen through dropout), so they mis-normalise other weights, e.g. the
    EMA's. Per BatchNorm: the mean of the batches' means and the pooled (biased) variance,
    each batch normalised by its own statistics on the way (precise BN, Wu & Johnson 2021).
    `batch_stats` only gives the structure; without BatchNorm it is returned as is."""
    if not jax.tree_util.tree_leaves(batch_stats):
        return batch_stats
    calibrate = generator.clone(bn_momentum=0.0, dropout=0.0)

    @jax.jit
    def stats_of(batch):
        _, updates = calibrate.apply({"params": params, "batch_stats": batch_stats}, model_input(batch), train=True,
                                     mutable=["batch_stats"])
        return updates["batch_stats"]

    sums, count = None, 0
    for batch in batches:
        stats = stats_of(batch)
        # Per BatchNorm dict: E[x] and E[x^2] of this batch, summed over batches.
        moments = jax.tree_util.tree_map(lambda d: (d["mean"], d["var"] + d["mean"] ** 2), stats,
                                         is_leaf=lambda d: isinstance(d, dict) and "mean" in d)
        sums = moments if sums is None else jax.tree_util.tree_map(jnp.add, sums, moments)
        count += 1
    if not count:
        raise ValueError("recompute_batch_stats got no batches: pass at least one masked batch.")
    return jax.tree_util.tree_map(lambda m: {"mean": m[0] / count, "var": m[1] / count - (m[0] / count) ** 2},
                                  sums, is_leaf=lambda m: isinstance(m, tuple))


WEIGHTS = ("generator", "ema")


def calibration_batches(data_cfg: InpaintDataConfig, num_images: int, batch_size: int = 256):
    """The first `num_images` train images (a multiple of `batch_size`) with their holes
    (image i gets mask index i), in equal batches: the data G's statistics are recomputed on."""
    from jaxvision import data

    if num_images < batch_size or num_images % batch_size:
        raise ValueError(f"Calibration takes a positive multiple of {batch_size} images, got {num_images}.")
    split = data_cfg.train_split
    split = split if "[" in split else f"{split}[:{num_images}]"  # a sliced split: its first images
    batches = data.eval_batches(data_cfg.dataset, split, global_batch_size=batch_size, data_dir=data_cfg.data_dir)

    def checked():
        for batch in _first(_with_masks(batches, data_cfg, 0), num_images):
            if not np.all(batch["mask"]):  # padding rows would bias the statistics
                raise ValueError(f"{data_cfg.dataset}:{data_cfg.train_split} has fewer than {num_images} images: "
                                 f"calibrate on fewer (calibration_images, a multiple of {batch_size}).")
            yield batch
    return checked()


def load_completer(workdir, weights: str = "generator", calibration_images: int = 1024):
    """(complete_fn(batch) -> completed images, config) of a pix2pix run: its config.json
    and newest checkpoint's G weights and BatchNorm statistics. `weights="ema"`: G's
    exponential moving average instead, with BatchNorm statistics recomputed for it on the
    first `calibration_images` train images (`recompute_batch_stats`)."""
    from jaxvision.train import load_params

    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {WEIGHTS} (G's own weights or their EMA).")
    workdir = Path(workdir)
    config = workdir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"No pix2pix run in {workdir} (no config.json): pass the --run folder of a run of "
                                "experiments/pix2pix_inpaint_fashion_mnist.py or jaxvision.tasks.pix2pix.run.")
    cfg = config_lib.from_dict(Pix2PixConfig, json.loads(config.read_text()))
    if cfg.model.image_size is None or cfg.model.channels is None:
        raise ValueError(f"{config} records no image size/channels: it is not a pix2pix run's config.")
    batch_stats = load_params(workdir, collection="model_state")[G]
    generator, _ = build_networks(cfg.model, cfg.model.image_size, cfg.model.channels)
    if weights == "ema":
        params = load_params(workdir, collection="extra")["ema"]
        batch_stats = recompute_batch_stats(generator, params, batch_stats,
                                            calibration_batches(cfg.data, calibration_images))
    else:
        params = load_params(workdir, collection="params")[G]
    fn = jax.jit(lambda batch: complete(generator, params, batch_stats, batch))
    return fn, cfg


def completion_source(complete_fn, batches_fn):
    """`samples(num_images, batch_size)` for jaxvision.metrics.evaluators: completed
    images of the eval split, in order (`batches_fn(num_images)` yields its masked batches)."""
    def samples(num_images, batch_size):
        left = num_images
        for batch in batches_fn(num_images):
            done = np.asarray(complete_fn(batch))[: min(left, len(batch["target"]))]
            left -= len(done)
            yield done
            if left <= 0:
                return
    return samples

