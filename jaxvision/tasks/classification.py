"""Image classification: config, pure step functions, and the run driver."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxvision import config as config_lib
from jaxvision.losses.classification import softmax_cross_entropy, topk_correct
from jaxvision.models.vit import ViT
from jaxvision.train import loop, optim, parallel
from jaxvision.train import state as state_lib
from jaxvision.train.grad import accumulated_value_and_grad

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# The model's options are ViT's own fields (models.vit.ViT documents them), declared once
# there. A run does not set these: the class count comes from the data, the patch size
# from the variant, and parameters stay float32 with the official zero-initialised head.
_NOT_CONFIGURED = ("num_classes", "patch_size", "param_dtype", "head_zero_init", "parent", "name")
ModelConfig = config_lib.config_class(
    "ModelConfig", ViT, exclude=_NOT_CONFIGURED, module=__name__,
    replace={"variant": (str, "Ti/16"), "dtype": (str, "float32")},  # dtype by name: DTYPES
    doc="The ViT's options (see models.vit.ViT): --config.model.FIELD=VALUE sets one.",
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
    augment: str = "none"
    image_size: int | None = None  # None: the dataset's own size
    in_memory: bool | None = None  # None: automatic by dataset size
    # A deterministic subset (see data.pipeline.select_examples): these original labels,
    # relabelled 0..n-1 (train and eval); and a label budget for training only.
    classes: tuple[int, ...] | None = None
    label_fraction: float | None = None
    examples_per_class: int | None = None


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "cosine"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9
    grad_clip_norm: float | None = 1.0
    label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class ClassificationConfig(loop.LoopConfig):
    """Seed, batch, steps, logging and checkpoint fields: see loop.LoopConfig."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    micro_batches: int = 1  # gradient accumulation: the global batch in this many pieces
    eval_every: int = 0  # 0: evaluate at the end only
    fsdp: bool = False  # mesh only: shard large parameters and optimizer state


def build_model(cfg: ModelConfig, num_classes: int) -> ViT:
    if cfg.dtype not in DTYPES:
        raise config_lib.ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}.")
    return ViT(num_classes=num_classes, **dict(dataclasses.asdict(cfg), dtype=DTYPES[cfg.dtype]))


def build_optimizer(cfg: OptimConfig, total_steps: int, frozen_mask=None, lr_multipliers=None):
    """`lr_multipliers`: optional tree (or params -> tree) of per-parameter learning-rate
    factors (layer-wise decay; see `jaxvision.train.param_groups`)."""
    lr = optim.schedule(cfg.learning_rate, total_steps, cfg.warmup_steps, cfg.schedule, cfg.end_lr_ratio)
    tx = optim.make_optimizer(
        cfg.name, lr, weight_decay=cfg.weight_decay, b1=cfg.b1, b2=cfg.b2, momentum=cfg.momentum,
        grad_clip_norm=cfg.grad_clip_norm, frozen_mask=frozen_mask,
    )
    if lr_multipliers is not None:
        from jaxvision.train.param_groups import scale_by_multipliers

        tx = optax.chain(tx, scale_by_multipliers(lr_multipliers))
    return tx, lr


def make_task(model, tx, *, image_shape, learning_rate=None, label_smoothing: float = 0.0,
              micro_batches: int = 1, init_params=None, axis_name: str | None = None) -> loop.Task:
    """Pure init / train / eval functions for `model` (returns (logits, intermediates)).

    `init_params(rng, params) -> params` lets fine-tuning replace freshly initialised
    weights with pretrained ones inside `init`, so resume and sharding stay the loop's job.
    `axis_name`: set by the pmap form; gradients are then averaged over that axis.
    """

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = model.init(params_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)["params"]
        if init_params is not None:
            params = init_params(params_rng, params)
        return state_lib.create(params, tx, state_rng)

    def train_step(state, batch):
        rng = state.step_rng()
        if axis_name is not None:  # distinct dropout masks on each device's slice
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def loss_fn(params, micro, index):
            # Each micro-batch draws its own dropout / drop-path masks (one batch: unchanged key).
            key = rng if micro_batches == 1 else jax.random.fold_in(rng, index)
            logits, _ = model.apply({"params": params}, micro["image"], train=True, rngs={"dropout": key})
            loss = softmax_cross_entropy(logits, micro["label"], label_smoothing=label_smoothing).mean()
            accuracy = topk_correct(logits, micro["label"], 1).mean()
            return loss, {"accuracy": accuracy}

        (loss, aux), grads = accumulated_value_and_grad(loss_fn, state.params, batch, micro_batches,
                                                        with_index=True)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.tree_utils.tree_norm(grads)}
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step) if callable(learning_rate) else learning_rate
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state, batch):
        logits, _ = model.apply({"params": state.params}, batch["image"], train=False)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, bool)).astype(jnp.float32)
        loss = softmax_cross_entropy(logits, batch["label"])
        return {
            "loss": jnp.sum(loss * mask),
            "accuracy": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
            "top5_accuracy": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
            "count": jnp.sum(mask),
        }

    return loop.Task(init=init, train_step=train_step, eval_step=eval_step)


def run(cfg: ClassificationConfig, workdir, *, init_params=None, frozen_mask=None, lr_multipliers=None) -> dict:
    """Train and evaluate a ViT classifier as `cfg` says; write everything to `workdir`."""
    from jaxvision import data  # TensorFlow only here: steps and models stay TF-free

    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require("image", "label", purpose="Classification")
    for split in (cfg.data.train_split, cfg.data.eval_split):
        data.pipeline._check_split(data.ensure_prepared(cfg.data.dataset, cfg.data.data_dir), split)
    size = cfg.data.image_size
    image_shape = (size, size, info.image_shape[2]) if size else info.image_shape
    if None in image_shape:
        raise config_lib.ConfigError(
            f"Dataset {cfg.data.dataset!r} has images of varying size: set data.image_size (e.g. 224)."
        )
    num_classes = len(cfg.data.classes) if cfg.data.classes else info.num_classes
    model = build_model(cfg.model, num_classes)
    tx, lr = build_optimizer(cfg.optim, cfg.total_steps, frozen_mask, lr_multipliers)
    form = parallel.make(cfg.parallel, fsdp=cfg.fsdp)
    task = make_task(model, tx, image_shape=image_shape, learning_rate=lr,
                     label_smoothing=cfg.optim.label_smoothing, micro_batches=cfg.micro_batches,
                     init_params=init_params, axis_name=form.axis_name)

    def train_data(start_step):
        return data.train_iterator(
            cfg.data.dataset, cfg.data.train_split, global_batch_size=cfg.global_batch_size, seed=cfg.seed,
            start_step=start_step, data_dir=cfg.data.data_dir, augment=cfg.data.augment,
            image_size=cfg.data.image_size, in_memory=cfg.data.in_memory, classes=cfg.data.classes,
            label_fraction=cfg.data.label_fraction, examples_per_class=cfg.data.examples_per_class,
        )

    def eval_data():
        return data.eval_batches(
            cfg.data.dataset, cfg.data.eval_split, global_batch_size=cfg.global_batch_size,
            data_dir=cfg.data.data_dir, image_size=cfg.data.image_size, classes=cfg.data.classes,
        )

    return loop.train(
        task,
        workdir=workdir,
        train_data=train_data,
        eval_data=eval_data,
        eval_prefix=cfg.data.eval_split.split("[")[0],
        global_batch_size=cfg.global_batch_size,
        eval_every=cfg.eval_every,
        parallel_form=form,
        config=config_lib.to_dict(cfg),
        **cfg.loop_args(),
    )


def ensure_classifier(workdir, config, steps: int, *, purpose: str = "The evaluation") -> None:
    """A classifier run in `workdir` (its config.json present), trained first with `config`
    for `steps` steps if the folder holds none (the metrics of generators and translators
    read their samples through it)."""
    from pathlib import Path

    if (Path(workdir) / "config.json").is_file():
        return
    print(f"{purpose}: no classifier run in {workdir}; training one for {steps} steps first.")
    run(dataclasses.replace(config, total_steps=steps), workdir)


def load_classifier(run, step: int | None = None):
    """(model, params) of a classification run: its config.json's model section and its
    newest (or `step`) checkpoint, through this task's model builder."""
    import json
    from pathlib import Path

    from jaxvision.train import load_params

    run = Path(run)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json): pass the --workdir of a "
                                "classification run")
    config = json.loads(config_path.read_text())
    try:
        # Only the model section matters (fine-tune runs add sections of their own).
        model_cfg = config_lib.from_dict(ModelConfig, config["model"])
    except (KeyError, config_lib.ConfigError) as err:
        raise ValueError(f"{run} is not a ViT classification run ({err}): pass the --workdir of one") from None
    params = load_params(run, step)
    if "head" not in params:
        raise ValueError(f"{run}'s model has no classifier head: pass a classification run")
    return build_model(model_cfg, num_classes=params["head"]["kernel"].shape[-1]), params


def classifier_fn_from_run(workdir):
    """A jitted `images -> (logits, pre-logit features)` function of a trained classifier
    run (see `load_classifier`), and its number of classes."""
    model, params = load_classifier(workdir)

    @jax.jit
    def classify(images):
        logits, intermediates = model.apply({"params": params}, images, train=False)
        return logits, intermediates["pre_logits"]

    return classify, params["head"]["kernel"].shape[-1]


def feature_fn_from_run(workdir):
    """A jitted `images -> pre-logit features` function of a trained classifier run: a
    feature space for Fréchet distances."""
    classify, _ = classifier_fn_from_run(workdir)
    return jax.jit(lambda images: classify(images)[1])
