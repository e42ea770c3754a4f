"""Fine-tuning a pretrained ViT: classification from a checkpoint, as config.

`FinetuneConfig` is a `ClassificationConfig` plus a `transfer` group: which checkpoint,
what to do with its head and representation layer, which parameters to freeze, and
per-layer learning rates. `run` reads the checkpoint (official/AugReg or big_vision
``.npz``, timm ``.safetensors``/``.pth``, or a jaxvision run folder), builds the model
with the checkpoint's architecture, loads it (position embeddings resampled to the new
grid, new zero-initialised head), optionally measures the few-shot ridge probe of the
initial features, and trains with `classification.run` - so resume, sharding,
checkpoints and logs are the one loop's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxvision import config as config_lib
from jaxvision.tasks import classification as cls

__all__ = ["FinetuneConfig", "TransferConfig", "fewshot_eval", "prepare", "run", "standard_recipe"]


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    # The checkpoint: .npz (official / big_vision), .safetensors / .pth (timm), or a
    # jaxvision run folder (its newest checkpoint).
    init: str | None = None
    format: str = "auto"  # auto | official | big_vision | timm
    head: str = "reset"  # reset: new zero-initialised head | keep | auto
    drop_representation: bool = True  # drop the checkpoint's pre_logits layer
    # none | linear_probe (only the head trains) | a regex of parameter names to freeze
    freeze: str = "none"
    layer_decay: float = 1.0  # lr x decay**(distance from the head), per block; 1 = off
    lr_multipliers: tuple[str, ...] = ()  # "REGEX=FACTOR" rules, e.g. ("^embedding/=0.1",)
    adapt_channels: bool = True  # RGB checkpoint -> grey data (sum filters) and back
    # Input normalisation the checkpoint was trained with, in [0, 1] units (many timm
    # models: ImageNet mean/std); folded into the patch embedding. None: [-1, 1] inputs.
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    num_heads: int | None = None  # timm state dicts do not store it (default: by width)
    architecture_from_checkpoint: bool = True  # width/depth/heads/patch/pool from the checkpoint
    strict: bool = True  # any missing / unexpected / mismatched entry is an error
    # Shots per class for a ridge-regression probe of the initial features, measured
    # before fine-tuning (e.g. (1, 5, 10, 25)); () = skip.
    fewshot: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(cls.ClassificationConfig):
    transfer: TransferConfig = TransferConfig()


def standard_recipe(dataset: str = "cifar10", *, image_size: int | None = 384, total_steps: int = 10_000,
                    learning_rate: float = 0.03, **overrides) -> FinetuneConfig:
    """The vision_transformer / big_vision fine-tuning recipe: SGD momentum 0.9, no weight
    decay, global-norm clipping at 1.0, global batch 512, 500 linear warmup steps then
    cosine decay, learning rate 0.003-0.03, new zero-initialised head, position
    embeddings resampled to the new resolution, representation layer dropped.
    10k steps for CIFAR, 20k for ImageNet."""
    config = FinetuneConfig(
        model=cls.ModelConfig(variant="B/16"),
        data=cls.DataConfig(dataset=dataset, augment="flip", image_size=image_size),
        optim=cls.OptimConfig(name="sgd", learning_rate=learning_rate, momentum=0.9, weight_decay=0.0,
                              grad_clip_norm=1.0, warmup_steps=500, schedule="cosine", label_smoothing=0.0),
        global_batch_size=512,
        total_steps=total_steps,
        log_every=50,
        eval_every=1000,
        checkpoint_every=1000,
        transfer=TransferConfig(head="reset", drop_representation=True),
    )
    return dataclasses.replace(config, **overrides)


def _resolve_source(init: str):
    path = Path(init).expanduser()
    if path.is_dir():  # a jaxvision run (or its checkpoints/ folder)
        from jaxvision.train.checkpoint import load_params

        return jax.tree_util.tree_map(lambda x: jax.device_get(x), load_params(path))
    if not path.exists():
        raise FileNotFoundError(f"transfer.init: no checkpoint at {path}")
    return str(path)


def _variant(arch: dict) -> str:
    """A variant string carrying the checkpoint's patch size (the overrides carry the rest)."""
    from jaxvision.models.vit import VARIANTS

    name = next((n for n, v in VARIANTS.items() if v["width"] == arch["width"]), "B")
    ph, pw = arch["patch_size"]
    return f"{name}/{ph}" if ph == pw else f"{name}/{ph}x{pw}"


HYBRID_FIELDS = ("resnet_width", "std_conv_eps", "resnet_convention")


def model_config_from_checkpoint(model_cfg, arch: dict, *, drop_representation: bool = False):
    """`model_cfg` with the architecture `pretrained.infer_vit_config` read from a
    checkpoint: width, depth, MLP, heads, patch, pool, GELU form, representation layer, and
    a hybrid's ResNet stem (stages, width, weight-standardisation convention) or none."""
    return dataclasses.replace(
        model_cfg, variant=_variant(arch), width=arch["width"], depth=arch["depth"], mlp_dim=arch["mlp_dim"],
        num_heads=arch["num_heads"], pool=arch["pool"], gelu_approximate=arch["gelu_approximate"],
        representation_size=None if drop_representation else arch["representation_size"],
        resnet_stages=arch.get("resnet_stages"), **{k: arch[k] for k in HYBRID_FIELDS if k in arch},
    )


def prepare(cfg: FinetuneConfig, *, log=print):
    """Everything `run` needs before training: (cfg with the checkpoint's architecture,
    model, loaded params, load report, image_shape, num_classes, frozen_mask, lr_multipliers)."""
    from jaxvision import data
    from jaxvision import pretrained
    from jaxvision.models import vit_layout
    from jaxvision.train import param_groups as groups

    t = cfg.transfer
    if not t.init:
        raise config_lib.ConfigError("transfer.init is empty: pass --init CHECKPOINT (or train from scratch "
                                     "with a classification experiment)")
    if t.head not in ("reset", "keep", "auto"):
        raise config_lib.ConfigError(f"transfer.head must be reset, keep or auto, got {t.head!r}")
    source = _resolve_source(t.init)
    model_cfg = cfg.model
    if t.architecture_from_checkpoint:
        arch = pretrained.infer_vit_config(source, format=t.format, num_heads=t.num_heads)
        model_cfg = model_config_from_checkpoint(model_cfg, arch, drop_representation=t.drop_representation)
        log(f"architecture from {t.init}: width {arch['width']}, depth {arch['depth']}, mlp {arch['mlp_dim']}, "
            f"heads {arch['num_heads']}, patch {arch['patch_size']}, pool {arch['pool']}, "
            f"{'exact' if not arch['gelu_approximate'] else 'tanh'} GELU, pretrained at {arch['image_size']}")
    cfg = dataclasses.replace(cfg, model=model_cfg)

    info = data.dataset_info(cfg.data.dataset, cfg.data.data_dir).require("image", "label", purpose="Fine-tuning")
    size = cfg.data.image_size
    image_shape = (size, size, info.image_shape[2]) if size else tuple(info.image_shape)
    if None in image_shape:
        raise config_lib.ConfigError(f"Dataset {cfg.data.dataset!r} has images of varying size: set "
                                     "data.image_size (e.g. 384).")
    num_classes = len(cfg.data.classes) if cfg.data.classes else info.num_classes
    model = cls.build_model(cfg.model, num_classes)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32))["params"]
    normalization = None
    if t.input_mean is not None or t.input_std is not None:
        if t.input_mean is None or t.input_std is None:
            raise config_lib.ConfigError("give both transfer.input_mean and transfer.input_std")
        normalization = (t.input_mean, t.input_std)
    loaded, report = pretrained.load_pretrained(
        source, template, format=t.format, head=t.head, drop_representation=t.drop_representation,
        image_size=image_shape[:2], adapt_channels=t.adapt_channels, input_normalization=normalization,
        num_heads=t.num_heads, strict=t.strict, model=model,
    )
    log(report.summary())

    frozen_mask = None
    if t.freeze == "linear_probe":
        frozen_mask = groups.frozen_mask_fn(trainable=vit_layout.HEAD)
    elif t.freeze not in ("none", ""):
        frozen_mask = groups.frozen_mask_fn(frozen=t.freeze)
    multipliers = []
    if t.layer_decay != 1.0:
        multipliers.append(groups.layerwise_multipliers_fn(t.layer_decay, vit_layout.layer_indices))
    if t.lr_multipliers:
        multipliers.append(groups.pattern_multipliers_fn(t.lr_multipliers))
    lr_multipliers = groups.combine_multipliers(*multipliers) if multipliers else None
    return cfg, model, loaded, report, image_shape, num_classes, frozen_mask, lr_multipliers


def fewshot_eval(cfg, model, params, shots, *, num_classes: int, log=print) -> dict:
    """Few-shot ridge probe of `params`' pre_logits features: for each k in `shots`, k
    training examples per class (deterministic choice) against the whole eval split."""
    from jaxvision import data
    from jaxvision.metrics import fewshot

    @jax.jit
    def features(images):
        return model.apply({"params": params}, images, train=False)[1]["pre_logits"]

    common = dict(global_batch_size=cfg.global_batch_size, data_dir=cfg.data.data_dir,
                  image_size=cfg.data.image_size)
    test_x, test_y = fewshot.extract_features(
        features, data.eval_batches(cfg.data.dataset, cfg.data.eval_split, classes=cfg.data.classes, **common))
    results = {}
    for k in shots:
        train_x, train_y = fewshot.extract_features(
            features, data.eval_batches(cfg.data.dataset, cfg.data.train_split, classes=cfg.data.classes,
                                        examples_per_class=int(k), **common))
        result = fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes=num_classes)
        results[f"fewshot_{k}shot_accuracy"] = result["accuracy"]
        results[f"fewshot_{k}shot"] = result
        log(f"few-shot ridge probe, {k} per class: {result['accuracy']:.4f} "
            f"(alpha {result['alpha']:g}, {result['num_test']} test images)")
    return results


def run(cfg: FinetuneConfig, workdir) -> dict:
    """Fine-tune as `cfg` says; writes the usual run files plus pretrained_load.json
    (and fewshot.json) to `workdir`."""

    def log(message):
        print(message, file=sys.stderr)

    cfg, model, loaded, report, image_shape, num_classes, frozen_mask, lr_multipliers = prepare(cfg, log=log)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pretrained_load.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    extra = {}
    if cfg.transfer.fewshot:
        from jaxvision.pretrained import merge_params

        params = loaded
        if not all(hasattr(x, "__array__") for x in jax.tree_util.tree_leaves(loaded)):  # strict=False gaps
            init = jax.jit(model.init)(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, *image_shape), jnp.float32))
            params = merge_params(init["params"], loaded)
        extra = fewshot_eval(cfg, model, params, cfg.transfer.fewshot,
                             num_classes=num_classes, log=log)
        (workdir / "fewshot.json").write_text(json.dumps(extra, indent=1) + "\n")

    def init_params(rng, params):
        from jaxvision.pretrained import merge_params

        del rng
        return merge_params(params, loaded)

    results = cls.run(cfg, workdir, init_params=init_params, frozen_mask=frozen_mask,
                      lr_multipliers=lr_multipliers)
    return {**results, **{k: v for k, v in extra.items() if k.endswith("_accuracy")}}
