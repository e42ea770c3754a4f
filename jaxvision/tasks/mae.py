"""Masked-autoencoder pretraining (He et al. 2021) on the one loop, without labels.

`MAEConfig` is the ViT's `ModelConfig` (the encoder: the same fields as classification,
so the pretrained encoder is the classifier's architecture), an `MAESettings` group (mask
ratio, decoder size, pixel-target normalisation), data and optimizer. `make_task` gives
the pure init / train / eval functions; the loss is the mean squared error on the removed
patches only, against per-patch normalised pixels ((p - mean) / sqrt(var + 1e-6), each
patch's own statistics). A hook writes reconstruction grids (masked input |
reconstruction | original) into the run's ``plots/``. `export_encoder` writes the encoder
as an official-layout ``.npz`` that `tasks.finetune` loads into a classification ViT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision import config as config_lib
from jaxvision.models.mae import MAE, MAEEncoder, check_mask_ratio, patchify, unpatchify
from jaxvision.tasks import classification as cls
from jaxvision.train import loop, parallel
from jaxvision.train.grad import accumulated_value_and_grad
from jaxvision.train import state as state_lib
from jaxvision.train.plots import save_image_grid

__all__ = ["MAEConfig", "MAESettings", "build_model", "export_encoder", "make_task", "masked_mse",
           "normalized_targets", "reconstruct", "run"]

NORM_PIX_EPS = 1e-6
EVAL_MASK_SEED = 0x3AE  # evaluation masks: the same at every evaluation and after resume


@dataclasses.dataclass(frozen=True)
class MAESettings:
    mask_ratio: float = 0.75
    decoder_width: int = 512  # paper: 8 blocks x 512 wide, 16 heads
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int | None = None  # None: 4 x decoder_width
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (the paper's better choice)
    num_reconstructions: int = 8  # test images in each reconstruction grid (0: no grids)


@dataclasses.dataclass(frozen=True)
class MAEConfig(loop.LoopConfig):
    """Seed, batch, steps, logging and checkpoint fields: see loop.LoopConfig."""

    model: cls.ModelConfig = cls.ModelConfig(pool="gap")
    mae: MAESettings = MAESettings()
    data: cls.DataConfig = cls.DataConfig()
    optim: cls.OptimConfig = cls.OptimConfig(b2=0.95, weight_decay=0.05)
    eval_every: int = 0  # 0: evaluate (and draw reconstructions) at the end only
    micro_batches: int = 1  # the batch's gradient in this many pieces (a CPU speed setting)


def build_model(cfg: cls.ModelConfig, settings: MAESettings) -> MAE:
    check_mask_ratio(settings.mask_ratio)
    if cfg.dtype not in cls.DTYPES:
        raise config_lib.ConfigError(f"model.dtype must be one of {sorted(cls.DTYPES)}, got {cfg.dtype!r}.")
    if cfg.stem == "spt":
        # Shifted patch tokens carry half of each neighbouring patch: the removed pixels
        # would leak into the visible tokens and the reconstruction task would be trivial.
        raise config_lib.ConfigError("model.stem='spt' leaks removed pixels into visible tokens; use 'patch' or "
                                     "'conv' for MAE pretraining")
    dtype = cls.DTYPES[cfg.dtype]
    encoder = MAEEncoder(num_classes=0, **dict(dataclasses.asdict(cfg), dtype=dtype))
    return MAE(encoder=encoder, mask_ratio=settings.mask_ratio, decoder_width=settings.decoder_width,
               decoder_depth=settings.decoder_depth, decoder_heads=settings.decoder_heads,
               decoder_mlp_dim=settings.decoder_mlp_dim, dtype=dtype)


def normalized_targets(images, patch_size, norm_pix: bool = True):
    """The pixels of every patch [B, N, P], each patch normalised by its own mean and
    variance (+1e-6) when `norm_pix`."""
    target = patchify(images, patch_size)
    if not norm_pix:
        return target
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True)
    return (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def masked_mse(pred, target, mask):
    """Per-example mean squared error over the removed patches only: [B]. Each patch's
    error is the mean over its pixels; visible patches (mask 0) do not count."""
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask, axis=1) / jnp.sum(mask, axis=1)


def make_task(model: MAE, tx, *, image_shape, learning_rate=None, norm_pix: bool = True, micro_batches: int = 1,
              axis_name: str | None = None, hooks=()) -> loop.Task:
    """Pure init / train / eval functions of MAE pretraining (images only; labels unused).

    `micro_batches`: the gradient of the whole batch computed in this many pieces (the
    same mean; on a CPU a speed setting, see `train.grad`); each piece draws its own masks.
    """
    patch_size = model.patch_size()

    def loss_of(params, images, key, train, noise=None):
        rngs = {"mask": jax.random.fold_in(key, 0), "dropout": jax.random.fold_in(key, 1)}
        pred, mask = model.apply({"params": params}, images, train=train, noise=noise, rngs=rngs)
        return masked_mse(pred, normalized_targets(images, patch_size, norm_pix), mask)

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        images = jnp.zeros((1, *image_shape), jnp.float32)
        params = model.init({"params": params_rng, "mask": params_rng}, images, train=False)["params"]
        return state_lib.create(params, tx, state_rng)

    def train_step(state, batch):
        rng = state.step_rng()
        if axis_name is not None:  # distinct masks on each device's slice
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        def loss_fn(params, micro, index):
            key = rng if micro_batches == 1 else jax.random.fold_in(rng, index)
            return loss_of(params, micro["image"], key, True).mean(), {}

        (loss, _), grads = accumulated_value_and_grad(loss_fn, state.params, {"image": batch["image"]},
                                                      micro_batches, with_index=True)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads)}
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step) if callable(learning_rate) else learning_rate
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state, batch):
        # A fixed key: every evaluation scores the same masks, so the curve is comparable.
        loss = loss_of(state.params, batch["image"], jax.random.PRNGKey(EVAL_MASK_SEED), False)
        valid = batch.get("mask", jnp.ones(loss.shape, bool)).astype(jnp.float32)
        return {"loss": jnp.sum(loss * valid), "count": jnp.sum(valid)}

    return loop.Task(init=init, train_step=train_step, eval_step=eval_step, hooks=tuple(hooks))


def reconstruct(model: MAE, params, images, key, norm_pix: bool = True):
    """(masked input, reconstruction, mask [B, N]) for showing: removed patches are grey
    (0) in the input; the reconstruction is the prediction on removed patches, shown in
    each patch's own pixel statistics when the targets were normalised (as the paper's
    figures), and the visible patches as they were."""
    patch_size = model.patch_size()
    pred, mask = model.apply({"params": params}, images, train=False, rngs={"mask": key})
    patches = patchify(images, patch_size)
    if norm_pix:
        mean = patches.mean(axis=-1, keepdims=True)
        std = jnp.sqrt(patches.var(axis=-1, keepdims=True) + NORM_PIX_EPS)
        pred = pred * std + mean
    removed = mask[:, :, None]
    shape = images.shape[1:]
    masked = unpatchify(patches * (1 - removed), patch_size, shape)
    recon = unpatchify(pred * removed + patches * (1 - removed), patch_size, shape)
    return masked, recon, mask


def reconstruction_hook(model, images, workdir, *, seed: int, norm_pix: bool, primary: bool):
    """hook(step, state): a grid of rows masked | reconstruction | original of `images`
    (fixed test images and masks) into workdir/plots/mae_reconstruction_<step>.png."""
    fn = jax.jit(lambda params: reconstruct(model, params, images, jax.random.PRNGKey(seed), norm_pix)[:2])

    def hook(step, state):
        masked, recon = jax.device_get(fn(state.params))
        if primary:
            rows = np.stack([masked, recon, np.asarray(images)], axis=1).reshape(-1, *images.shape[1:])
            save_image_grid(rows, Path(workdir) / "plots" / f"mae_reconstruction_{step:07d}.png", nrow=3)
        return {}

    return hook


def run(cfg: MAEConfig, workdir) -> dict:
    """Pretrain an MAE as `cfg` says (images only); write everything to `workdir`."""
    from jaxvision import data  # TensorFlow only here

    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require("image", purpose="MAE pretraining")
    size = cfg.data.image_size
    image_shape = (size, size, info.image_shape[2]) if size else info.image_shape
    if None in image_shape:
        raise config_lib.ConfigError(f"Dataset {cfg.data.dataset!r} has images of varying size: set data.image_size.")
    model = build_model(cfg.model, cfg.mae)
    tx, lr = cls.build_optimizer(cfg.optim, cfg.total_steps)
    form = parallel.make(cfg.parallel)
    common = dict(data_dir=cfg.data.data_dir, image_size=cfg.data.image_size, features=("image",))
    hooks = []
    if cfg.mae.num_reconstructions:
        first = next(iter(data.eval_batches(cfg.data.dataset, cfg.data.eval_split,
                                            global_batch_size=cfg.mae.num_reconstructions, **common)))
        hooks.append(reconstruction_hook(model, jnp.asarray(first["image"]), workdir, seed=cfg.seed,
                                         norm_pix=cfg.mae.norm_pix_loss, primary=jax.process_index() == 0))
    task = make_task(model, tx, image_shape=image_shape, learning_rate=lr, norm_pix=cfg.mae.norm_pix_loss,
                     micro_batches=cfg.micro_batches, axis_name=form.axis_name, hooks=hooks)

    def train_data(start_step):
        return data.train_iterator(cfg.data.dataset, cfg.data.train_split, global_batch_size=cfg.global_batch_size,
                                   seed=cfg.seed, start_step=start_step, augment=cfg.data.augment,
                                   in_memory=cfg.data.in_memory, **common)

    def eval_data():
        return data.eval_batches(cfg.data.dataset, cfg.data.eval_split, global_batch_size=cfg.global_batch_size,
                                 **common)

    return loop.train(task, workdir=workdir, train_data=train_data, eval_data=eval_data,
                      eval_prefix=cfg.data.eval_split.split("[")[0], global_batch_size=cfg.global_batch_size,
                      eval_every=cfg.eval_every, parallel_form=form, config=config_lib.to_dict(cfg),
                      **cfg.loop_args())


def export_encoder(workdir, path) -> Path:
    """The encoder of an MAE run (newest checkpoint) as an official-layout ``.npz``
    (no head): load it with ``tasks.finetune`` (``transfer.init=path``) or
    `jaxvision.pretrained.load_pretrained`."""
    from jaxvision.pretrained import save_npz
    from jaxvision.train import load_params

    params = jax.device_get(load_params(workdir))
    if "encoder" not in params:
        raise ValueError(f"{workdir} is not an MAE run (its parameters have no 'encoder'): pass an MAE run folder")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(params["encoder"], path)
    return path
