"""Semantic segmentation on the one loop: Segmenter (ViT + linear or mask-transformer
decoder) or a U-Net baseline, per-pixel cross-entropy, mIoU from a confusion matrix.

Evaluation: `eval_step` returns the batch's confusion matrix (and summed loss); the loop
sums them over the whole eval split and `finalize` turns the total into mIoU, pixel
accuracy and per-class IoU (`jaxvision.metrics.segmentation`).

Initialisation: from scratch, or the Segmenter's encoder from a classifier run (`init`: a
jaxvision run folder such as the main job's `runs/vit_fashion_mnist`) through the transfer
path (`pretrained_encoder_init`: position embeddings resampled to the new grid by
`jaxvision.pretrained.resample`, the classification head dropped); the decoder starts fresh. The encoder must then
have the checkpoint's architecture (`encoder_from_run` reads it from the run's config).

Data: any dataset `jaxvision.data.dense_batches` maps (the synthetic `fashion_scenes`;
online, `oxford_iiit_pet`): batches {"image", "segmentation" [B, H, W] int32}; label 255
is ignored by the loss and the metrics, any other label outside the head is an error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxvision import config as config_lib
from jaxvision.metrics.segmentation import IGNORE_INDEX, check_labels, confusion_matrix, segmentation_metrics
from jaxvision.models.segmenter import Segmenter
from jaxvision.models.unet import UNet
from jaxvision.tasks import classification as cls
from jaxvision.train import loop, parallel
from jaxvision.train import state as state_lib

__all__ = ["SegmentationConfig", "SegModelConfig", "SegDataConfig", "build_model", "encoder_from_run",
           "make_task", "pixel_cross_entropy", "run"]

ARCHITECTURES = ("segmenter", "unet")


@dataclasses.dataclass(frozen=True)
class SegModelConfig:
    architecture: str = "segmenter"  # segmenter | unet (the convolutional baseline)
    encoder: cls.ModelConfig = cls.ModelConfig(variant="Ti/8", pool="gap")  # the ViT (no head)
    decoder: str = "mask_transformer"  # linear | mask_transformer
    decoder_depth: int = 2
    decoder_width: int | None = None  # None: the encoder's
    decoder_heads: int | None = None
    decoder_dropout: float = 0.0
    unet_width: int = 16  # U-Net baseline: first level's channels
    unet_depth: int | None = 4  # levels (None: down to 1 px)
    unet_norm: str = "instance"  # no batch statistics: the state stays params-only
    # The model sees images resized (bilinear, antialiased) to input_size x input_size; its
    # logits are resized back to the labels' size, so loss and metrics stay at full
    # resolution. None: the images' own size.
    input_size: int | None = None


@dataclasses.dataclass(frozen=True)
class SegDataConfig:
    dataset: str = "fashion_scenes/canvas64"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    augment: str = "flip"
    image_size: int | None = None  # None: the dataset's own size (needed for varying sizes)


@dataclasses.dataclass(frozen=True)
class SegmentationConfig(loop.LoopConfig):
    model: SegModelConfig = SegModelConfig()
    data: SegDataConfig = SegDataConfig()
    optim: cls.OptimConfig = cls.OptimConfig()
    init: str | None = None  # classifier run folder for the encoder; None: from scratch
    eval_every: int = 0
    plot_examples: int = 6  # test images in plots/segmentation_predictions.png


def build_model(cfg: SegModelConfig, num_classes: int, image_size: int):
    if cfg.architecture not in ARCHITECTURES:
        raise config_lib.ConfigError(f"model.architecture must be one of {ARCHITECTURES}, got {cfg.architecture!r}")
    if cfg.architecture == "unet":
        return UNet(image_size=image_size, out_channels=num_classes, width=cfg.unet_width, depth=cfg.unet_depth,
                    dropout=0.0, norm=cfg.unet_norm, output_activation=None)
    encoder = cls.build_model(cfg.encoder, num_classes=0)
    return Segmenter(num_classes=num_classes, encoder=encoder, decoder=cfg.decoder, decoder_depth=cfg.decoder_depth,
                     decoder_width=cfg.decoder_width, decoder_heads=cfg.decoder_heads,
                     decoder_dropout=cfg.decoder_dropout)


def pixel_cross_entropy(logits, labels, ignore_index: int = IGNORE_INDEX):
    """(sum of per-pixel softmax cross-entropies, number of counted pixels); ignored
    labels count for nothing."""
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(losses * valid), jnp.sum(valid)


def _apply(model, params, images, train, rng=None, input_size=None):
    """Per-pixel logits at the images' size (the model runs at input_size when given)."""
    b, h, w, c = images.shape
    if input_size is not None and (h, w) != (input_size, input_size):
        images = jax.image.resize(images, (b, input_size, input_size, c), method="bilinear")
    if isinstance(model, UNet):
        logits = model.apply({"params": params}, images, train=train)
    else:
        rngs = {"dropout": rng} if rng is not None else {}
        logits = model.apply({"params": params}, images, train=train, rngs=rngs)
    if logits.shape[1:3] != (h, w):
        logits = jax.image.resize(logits, (b, h, w, logits.shape[-1]), method="bilinear")
    return logits


def make_task(model, tx, *, image_shape, num_classes: int, learning_rate=None, init_params=None,
              axis_name: str | None = None, class_names=None, hooks=(), input_size: int | None = None) -> loop.Task:
    """Pure init / train / eval functions for a model mapping images to per-pixel logits
    (run at input_size x input_size when given; logits resized to the labels' size)."""
    model_shape = (input_size, input_size, image_shape[2]) if input_size else tuple(image_shape)

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = model.init(params_rng, jnp.zeros((1, *model_shape), jnp.float32), train=False)["params"]
        if init_params is not None:
            params = init_params(params)
        return state_lib.create(params, tx, state_rng)

    def train_step(state, batch):
        rng = state.step_rng()
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def loss_fn(params):
            logits = _apply(model, params, batch["image"], True, rng, input_size)
            total, count = pixel_cross_entropy(logits, batch["segmentation"])
            correct = jnp.sum((jnp.argmax(logits, -1) == batch["segmentation"]) * (batch["segmentation"] != IGNORE_INDEX))
            return total / jnp.maximum(count, 1), correct / jnp.maximum(count, 1)

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "pixel_accuracy": accuracy, "grad_norm": optax.tree_utils.tree_norm(grads)}
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step) if callable(learning_rate) else learning_rate
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state, batch):
        logits = _apply(model, state.params, batch["image"], False, input_size=input_size)
        labels = batch["segmentation"]
        weights = batch.get("mask", jnp.ones(labels.shape[:1], bool))
        labels = jnp.where(weights.reshape(-1, 1, 1), labels, IGNORE_INDEX)  # padding examples count for nothing
        total, count = pixel_cross_entropy(logits, labels)
        return {"confusion": confusion_matrix(labels, jnp.argmax(logits, -1), num_classes),
                "loss": total, "pixels": count}

    def finalize(totals):
        out = segmentation_metrics(totals["confusion"], class_names)
        out["loss"] = float(totals["loss"]) / max(float(totals["pixels"]), 1.0)
        return out

    return loop.Task(init=init, train_step=train_step, eval_step=eval_step, finalize=finalize, hooks=tuple(hooks),
                     progress_metrics=("loss", "pixel_accuracy"))


def encoder_from_run(workdir) -> tuple[cls.ModelConfig, dict]:
    """(the encoder config, its parameters) of a classifier run: its config.json's model
    section (patch dropout off: dense tasks need every token) and newest checkpoint."""
    from jaxvision.train.checkpoint import load_params

    model_cfg = config_lib.from_dict(cls.ModelConfig, json.loads((Path(workdir) / "config.json").read_text())["model"])
    params = jax.tree_util.tree_map(jax.device_get, load_params(workdir))
    return dataclasses.replace(model_cfg, patch_dropout=0.0), params


def pretrained_encoder_init(source_params, image_shape, model, *, log=print):
    """(init_params, report): init_params(params) puts `source_params` (a jaxvision ViT
    classifier's, same architecture) into the Segmenter's encoder: position embeddings
    resampled bilinearly to this image size's grid (`pretrained.resample`), the head and
    representation layer dropped, every other entry shape-checked.

    (A jaxvision run has the model's own layout: `pretrained.resample.fit_run_params`.)"""
    from jaxvision.pretrained.resample import fit_run_params

    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))["params"]["encoder"]
    ph, pw = model.encoder.resolved_config()["patch_size"]
    grid = (image_shape[0] // ph, image_shape[1] // pw)
    loaded, resampled = fit_run_params(source_params, template, grid=grid,
                                       num_prefix=1 if model.encoder.pool == "cls" else 0, where="the classifier")
    report = {"dropped": sorted(k for k in source_params if k in ("head", "pre_logits")), "resampled": resampled,
              "loaded": ["/".join(str(getattr(k, "key", k)) for k in path)
                         for path, _ in jax.tree_util.tree_leaves_with_path(loaded)]}
    log(f"encoder from the classifier: {len(report['loaded'])} arrays, resampled {report['resampled']}, "
        f"dropped {report['dropped']}")

    def init_params(params):
        return {**params, "encoder": loaded}

    return init_params, report


def run(cfg: SegmentationConfig, workdir) -> dict:
    """Train and evaluate as `cfg` says; writes the run files and plots/segmentation_predictions.png."""
    import sys

    from jaxvision import data

    source = data.dense_source(cfg.data.dataset)
    if source.segmentation is None:
        raise config_lib.ConfigError(f"{cfg.data.dataset!r} has no segmentation masks; use a segmentation dataset "
                                     f"(e.g. fashion_scenes/canvas64, oxford_iiit_pet)")
    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require(source.segmentation, purpose="Segmentation")
    size = cfg.data.image_size
    image_shape = (size, size, info.image_shape[2]) if size else tuple(info.image_shape)
    if None in image_shape:
        raise config_lib.ConfigError(f"{cfg.data.dataset!r} has images of varying size: set data.image_size.")
    num_classes = source.num_classes
    model_cfg, init_params = cfg.model, None
    if cfg.init:
        if cfg.model.architecture != "segmenter":
            raise config_lib.ConfigError("init (a classifier run) needs model.architecture='segmenter'")
        encoder_cfg, source_params = encoder_from_run(cfg.init)
        model_cfg = dataclasses.replace(cfg.model, encoder=encoder_cfg)
        cfg = dataclasses.replace(cfg, model=model_cfg)
    input_size = cfg.model.input_size
    model_shape = (input_size, input_size, image_shape[2]) if input_size else image_shape
    model = build_model(model_cfg, num_classes, model_shape[0])
    if cfg.init:
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        init_params, report = pretrained_encoder_init(source_params, model_shape, model, log=log)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "pretrained_load.json").write_text(json.dumps(report, indent=1) + "\n")
    tx, lr = cls.build_optimizer(cfg.optim, cfg.total_steps)
    form = parallel.make(cfg.parallel)
    names = [n.replace("/", "_").replace(" ", "_") for n in source.class_names] or None

    def checked(batches):
        for b in batches:
            check_labels(b["segmentation"], num_classes, image_shape=b["image"].shape[1:3])
            yield {k: b[k] for k in ("image", "segmentation", "mask") if k in b}

    common = dict(data_dir=cfg.data.data_dir, image_size=cfg.data.image_size)

    def train_data(start_step):
        return checked(data.dense_batches(cfg.data.dataset, cfg.data.train_split, train=True,
                                          global_batch_size=cfg.global_batch_size, seed=cfg.seed,
                                          start_step=start_step, augment=cfg.data.augment, **common))

    def eval_data():
        return checked(data.dense_batches(cfg.data.dataset, cfg.data.eval_split, train=False,
                                          global_batch_size=cfg.global_batch_size, **common))

    def plot_hook(step, state):
        if step != cfg.total_steps or not cfg.plot_examples or jax.process_index() != 0:
            return None
        from jaxvision.train.plots_dense import plot_segmentation

        batch = next(iter(data.dense_batches(cfg.data.dataset, cfg.data.eval_split, train=False,
                                             global_batch_size=cfg.plot_examples, **common)))
        logits = jax.jit(lambda p, x: _apply(model, p, x, False, input_size=input_size))(state.params, batch["image"])
        plot_segmentation(batch["image"], batch["segmentation"], jax.device_get(jnp.argmax(logits, -1)),
                          Path(workdir) / "plots" / "segmentation_predictions.png", num_classes=num_classes,
                          class_names=source.class_names)
        return None

    task = make_task(model, tx, image_shape=image_shape, num_classes=num_classes, learning_rate=lr,
                     init_params=init_params, axis_name=form.axis_name, class_names=names, hooks=(plot_hook,),
                     input_size=input_size)
    return loop.train(task, workdir=workdir, train_data=train_data, eval_data=eval_data,
                      eval_prefix=cfg.data.eval_split.split("[")[0], global_batch_size=cfg.global_batch_size,
                      eval_every=cfg.eval_every, parallel_form=form, config=config_lib.to_dict(cfg),
                      **cfg.loop_args())
