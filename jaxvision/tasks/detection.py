"""Object detection: DETR-style set prediction on ViT tokens, on the one loop.

The model is `jaxvision.models.detr.DETR` (a ViT backbone + a small decoder of learned
queries); the loss is `jaxvision.losses.detection.set_loss` (Hungarian matching inside the
jitted step, DETR's costs and weights, auxiliary losses per decoder layer); the metrics are
COCO's AP / AP50 / AP75 through pycocotools (`jaxvision.metrics.coco`).

Evaluation on the one loop: the loop sums each batch's statistics. Each eval batch gets
its images' positions in the split ("index", added by `run`'s eval data), and `eval_step`
writes its detections and ground truth into split-sized zero buffers at those positions,
so the summed buffers are the whole test set's per-image arrays (every image is written by
exactly one batch; padding examples fall outside and are dropped). `finalize` hands them
to COCOeval.

Heads: "detr" (`models.detr.DETR`, set loss) or "center" (`models.detr.CenterDetector`,
CenterNet-style heatmaps, `losses.detection.center_loss`), chosen by `DetectionConfig.head`.

Initialisation: from scratch, or the backbone from a classifier run (`init`: a jaxvision
run folder such as the main job's `runs/vit_fashion_mnist`): its architecture and newest
weights, position embeddings resampled to the new token grid as `jaxvision.pretrained`
does, the classification head dropped; the decoder and heads start fresh.

Bad input: training and eval batches are checked on the host (class ids within the head,
boxes inside [0, 1] with non-negative size) with errors that name the example.
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
from jaxvision.losses import detection as det_loss
from jaxvision.metrics.coco import coco_box_ap
from jaxvision.models.detr import DETR, CenterDetector
from jaxvision.tasks import classification as cls
from jaxvision.train import loop, parallel
from jaxvision.train import state as state_lib

__all__ = ["DetectionConfig", "DetectionDataConfig", "DetrConfig", "backbone_from_run", "make_task",
           "postprocess", "run"]


@dataclasses.dataclass(frozen=True)
class DetrConfig:
    num_queries: int = 10
    decoder_layers: int = 2
    hidden_dim: int | None = None  # None: the backbone's width
    num_heads: int = 4
    mlp_dim: int | None = None
    eos_coef: float = 0.1  # weight of the no-object class in the cross-entropy
    class_weight: float = 1.0  # matching cost and loss weight, as DETR
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    aux_loss: bool = True  # losses after every decoder layer, not only the last


@dataclasses.dataclass(frozen=True)
class DetectionDataConfig:
    dataset: str = "fashion_scenes/canvas64"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    augment: str = "flip"  # boxes move with the image
    image_size: int | None = None  # None: the dataset's own size
    max_objects: int = 5


@dataclasses.dataclass(frozen=True)
class DetectionConfig(loop.LoopConfig):
    backbone: cls.ModelConfig = cls.ModelConfig(variant="Ti/4", width=64, depth=4, mlp_dim=128, num_heads=4,
                                                pool="gap")
    detr: DetrConfig = DetrConfig()
    data: DetectionDataConfig = DetectionDataConfig()
    optim: cls.OptimConfig = cls.OptimConfig(name="adamw", learning_rate=1e-3, warmup_steps=100, weight_decay=1e-4,
                                             grad_clip_norm=0.1)
    # A classifier run folder (its config.json and newest checkpoint) whose ViT becomes the
    # backbone; None: from scratch. The backbone's architecture then comes from that run.
    init: str | None = None
    # "detr": set prediction (queries, Hungarian matching); "center": the dense anchor-free
    # alternative (CenterNet heatmaps on the token grid or a 2x grid), `center_*` fields.
    head: str = "detr"
    center_head_dim: int = 64
    # Where the head reaches its 2x output grid (`models.detr.CenterDetector.upsample`):
    # "features" (upsample the tokens, heads on the 2x grid), "outputs" (heads on the token
    # grid, a transposed-conv output layer; about 4x cheaper), "none" (token grid).
    center_upsample: str = "features"
    center_detections: int = 20  # per image, the best heatmap peaks
    backbone_lr_multiplier: float = 1.0  # DETR trains its backbone at 0.1 x
    eval_every: int = 0


def backbone_from_run(run_dir: str, backbone_cfg: cls.ModelConfig, image_size, *, log=print):
    """(backbone config, backbone params) from a jaxvision classifier run: its model section
    (patch dropout off: a detector needs every token) and its newest parameters, for a
    head-less ViT at `image_size`: position embeddings resampled to the new token grid
    (bilinear, as `jaxvision.pretrained` does for checkpoints), the head dropped, every
    other entry checked against the new model's shapes. `backbone_cfg` is unused: the
    run decides the architecture.

    (A jaxvision run has the model's own layout: `pretrained.resample.fit_run_params`.)"""
    from jaxvision.pretrained.resample import fit_run_params
    from jaxvision.train.checkpoint import load_params

    del backbone_cfg
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"init: {run_dir} is not a jaxvision run folder (no config.json); train the "
                                "classifier first (experiments/vit_fashion_mnist.py) or pass init=None")
    model = json.loads((run_dir / "config.json").read_text())["model"]
    cfg = dataclasses.replace(config_lib.from_dict(cls.ModelConfig, model), patch_dropout=0.0)
    vit = cls.build_model(cfg, num_classes=0)
    template = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_size), jnp.float32))["params"]
    ph, pw = vit.resolved_config()["patch_size"]
    loaded, resampled = fit_run_params(load_params(run_dir), template, grid=(image_size[0] // ph, image_size[1] // pw),
                                       num_prefix=1 if cfg.pool == "cls" else 0, where=f"init {run_dir}")
    for entry in resampled:
        log(f"{entry}: resampled")
    log(f"backbone from {run_dir}: {len(jax.tree_util.tree_leaves(loaded))} arrays, head dropped")
    return cfg, loaded


def postprocess(outputs, k: int = 20):
    """Detections of either head -> (boxes [B, D, 4] normalised [xmin, ymin, xmax, ymax],
    scores [B, D], labels [B, D]). DETR: the last decoder layer; per query the most likely
    real class and its probability (softmax over classes + no-object), D = queries. Centre
    heatmaps: the `k` best peaks (`losses.detection.center_detections`), D = k."""
    if "heatmap" in outputs:
        return det_loss.center_detections(outputs["heatmap"], outputs["ltrb"], k)
    prob = jax.nn.softmax(outputs["logits"][-1], axis=-1)[..., :-1]
    return det_loss.cxcywh_to_xyxy(outputs["boxes"][-1]), prob.max(-1), prob.argmax(-1)


def make_task(model, tx, *, image_shape, detr: DetrConfig, num_eval: int, init_params=None,
              learning_rate=None, axis_name=None, detections: int = 20) -> loop.Task:
    """Pure init / train / eval for `model`. `num_eval`: images in the evaluation split
    (the size of the buffers eval_step writes into; batches carry their "index")."""
    loss_kw = dict(eos_coef=detr.eos_coef, class_weight=detr.class_weight, l1_weight=detr.l1_weight,
                   giou_weight=detr.giou_weight)

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = model.init(params_rng, jnp.zeros((1, *image_shape), jnp.float32))["params"]
        if init_params is not None:
            params = init_params(params_rng, params)
        return state_lib.create(params, tx, state_rng)

    def targets(batch):
        return (batch["labels"], det_loss.yxyx_to_cxcywh(batch["boxes"]), batch["valid"])

    def train_step(state, batch):
        rng = state.step_rng()
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def loss_fn(params):
            outputs, _ = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
            if "heatmap" in outputs:
                return det_loss.center_loss(outputs["heatmap"], outputs["ltrb"], *targets(batch),
                                            l1_weight=detr.l1_weight, giou_weight=detr.giou_weight)
            logits, boxes = outputs["logits"], outputs["boxes"]
            if not detr.aux_loss:
                logits, boxes = logits[-1:], boxes[-1:]
            return det_loss.set_loss(logits, boxes, *targets(batch), axis_name=axis_name, **loss_kw)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree_utils.tree_norm(grads)}
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step) if callable(learning_rate) else learning_rate
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state, batch):
        outputs, _ = model.apply({"params": state.params}, batch["image"], train=False)
        boxes, scores, labels = postprocess(outputs, detections)
        real = batch.get("mask", jnp.ones(batch["image"].shape[:1], bool))
        index = jnp.where(real, batch["index"], num_eval)  # padding: out of range, dropped

        def place(x):  # this batch's rows at their positions in the split, zeros elsewhere
            return jnp.zeros((num_eval, *x.shape[1:]), jnp.float32).at[index].set(x.astype(jnp.float32),
                                                                                mode="drop")

        gt = det_loss.cxcywh_to_xyxy(det_loss.yxyx_to_cxcywh(batch["boxes"]))
        return {"det_boxes": place(boxes), "det_scores": place(scores), "det_labels": place(labels),
                "gt_boxes": place(gt), "gt_labels": place(batch["labels"]), "gt_valid": place(batch["valid"]),
                "seen": place(jnp.ones_like(scores[:, 0]))}

    return loop.Task(init=init, train_step=train_step, eval_step=eval_step, progress_metrics=("loss", "loss_giou"))


def coco_finalize(num_classes: int, canvas, class_names=None):
    """totals (the summed eval buffers) -> COCO AP / AP50 / AP75 and per class
    "AP/<name>", "AP50/<name>", boxes in `canvas` pixels."""
    h, w = canvas
    scale = np.array([w, h, w, h], np.float64)

    def finalize(t):
        seen = np.asarray(t["seen"])
        if not np.all(seen == 1):
            raise ValueError(f"evaluation wrote {int((seen == 1).sum())} of {seen.size} images once "
                             "(the eval data's 'index' must cover the split exactly once)")
        q = t["det_scores"].shape[1]
        metrics = coco_box_ap(
            t["gt_boxes"] * scale, np.rint(t["gt_labels"]).astype(int), t["gt_valid"] > 0.5,
            t["det_boxes"] * scale, t["det_scores"], np.rint(t["det_labels"]).astype(int),
            np.ones(t["det_scores"].shape, bool), image_size=(h, w), num_classes=num_classes,
            class_names=class_names)
        return {**metrics, "images": float(seen.size), "detections_per_image": float(q)}

    return finalize


def _checked(batches, num_classes: int):
    """Pass batches through, raising on object labels the head cannot predict or boxes
    outside the image / of negative size (silently clamped indices would train garbage)."""
    for batch in batches:
        valid = np.asarray(batch["valid"], bool)
        labels, boxes = np.asarray(batch["labels"]), np.asarray(batch["boxes"])
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ValueError(f"object {k} of example {i} has class id {int(labels[i, k])}, outside the head's "
                             f"{num_classes} classes: check the dataset's labels or the head's class count")
        bad = valid & (np.any(boxes < -1e-6, -1) | np.any(boxes > 1 + 1e-6, -1)
                       | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1]))
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ValueError(f"object {k} of example {i} has box {boxes[i, k].tolist()}: boxes must be normalised "
                             "[ymin, xmin, ymax, xmax] inside [0, 1] with ymin <= ymax and xmin <= xmax")
        yield batch


def _with_index(batches):
    """Number the images of an in-order eval stream (one process: positions in the split)."""
    start = 0
    for batch in batches:
        n = batch["image"].shape[0]
        yield {**batch, "index": np.arange(start, start + n, dtype=np.int32)}
        start += n


def build(cfg: DetectionConfig, *, log=print):
    """(cfg with the backbone's final architecture, model, image_shape, num_classes,
    loaded backbone params or None)."""
    from jaxvision import data

    name = cfg.data.dataset
    info = data.dataset_info(name, cfg.data.data_dir)
    source = data.dense_source(name)
    size = cfg.data.image_size
    image_shape = (size, size, info.image_shape[2]) if size else tuple(info.image_shape)
    backbone_cfg, loaded = cfg.backbone, None
    if cfg.init:
        backbone_cfg, loaded = backbone_from_run(cfg.init, cfg.backbone, image_shape, log=log)
        cfg = dataclasses.replace(cfg, backbone=backbone_cfg)
    vit = cls.build_model(backbone_cfg, num_classes=0)
    d = cfg.detr
    if cfg.head == "center":
        return cfg, CenterDetector(backbone=vit, num_classes=object_classes(source), head_dim=cfg.center_head_dim,
                                  upsample=cfg.center_upsample), \
            image_shape, object_classes(source), loaded
    if cfg.head != "detr":
        raise config_lib.ConfigError(f"head must be 'detr' or 'center', got {cfg.head!r}")
    model = DETR(backbone=vit, num_classes=object_classes(source), num_queries=d.num_queries,
                 decoder_layers=d.decoder_layers, hidden_dim=d.hidden_dim, num_heads=d.num_heads, mlp_dim=d.mlp_dim)
    return cfg, model, image_shape, object_classes(source), loaded


def object_classes(source) -> int:
    """Object classes of a dense source: fashion_scenes counts background in its dense map
    (11) but labels its objects 0-9; voc / coco count object classes only."""
    names = source.class_names
    return len(names) - 1 if names and names[0] == "background" else source.num_classes


def object_class_names(source):
    """The names of a dense source's object classes (background left out), or None."""
    names = source.class_names
    return list(names[1:] if names and names[0] == "background" else names) or None


def plot_predictions(cfg: DetectionConfig, workdir, n: int = 6, *, score_threshold: float = 0.5):
    """image | ground truth | prediction (boxes with class names and scores) for the first
    `n` scenes of the eval split, from the run's newest checkpoint -> workdir/plots/detections.png."""
    import sys

    from jaxvision import data
    from jaxvision.train.checkpoint import load_params
    from jaxvision.train.plots_dense import plot_detection

    saved = json.loads(Path(workdir, "config.json").read_text())["backbone"]  # the backbone the run used
    cfg = dataclasses.replace(cfg, init=None, backbone=config_lib.from_dict(cls.ModelConfig, saved))
    cfg, model, _, _, _ = build(cfg, log=lambda m: None)
    params = load_params(workdir)
    batch = next(iter(data.dense_batches(cfg.data.dataset, f"{cfg.data.eval_split.split('[')[0]}[:{n}]",
                                         train=False, global_batch_size=n, data_dir=cfg.data.data_dir,
                                         image_size=cfg.data.image_size, max_objects=cfg.data.max_objects)))
    outputs, _ = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, batch["image"])
    boxes, scores, labels = (np.asarray(a) for a in postprocess(outputs, cfg.center_detections))
    names = object_class_names(data.dense_source(cfg.data.dataset))
    path = plot_detection(batch["image"], batch["boxes"], batch["labels"], batch["valid"],
                          np.clip(boxes[..., [1, 0, 3, 2]], 0, 1), labels, scores,
                          Path(workdir) / "plots" / "detections.png", class_names=names,
                          score_threshold=score_threshold)
    print(f"detections plotted: {path}", file=sys.stderr)
    return path


def run(cfg: DetectionConfig, workdir) -> dict:
    """Train and evaluate a detector as `cfg` says; write everything to `workdir`."""
    import sys

    from jaxvision import data
    from jaxvision.pretrained import merge_params

    if jax.process_count() > 1:
        raise NotImplementedError("detection evaluation numbers images on one process; run it on one host")
    cfg, model, image_shape, num_classes, loaded = build(cfg, log=lambda m: print(m, file=sys.stderr))
    builder = data.ensure_prepared(cfg.data.dataset, cfg.data.data_dir)
    num_eval = data.pipeline._check_split(builder, cfg.data.eval_split)
    canvas = tuple(data.dataset_info(cfg.data.dataset, cfg.data.data_dir).image_shape[:2])
    rules = (f"^backbone/={cfg.backbone_lr_multiplier}",) if cfg.backbone_lr_multiplier != 1.0 else ()
    from jaxvision.train.param_groups import pattern_multipliers_fn

    tx, lr = cls.build_optimizer(cfg.optim, cfg.total_steps, None, pattern_multipliers_fn(rules) if rules else None)
    form = parallel.make(cfg.parallel)
    init_params = None
    if loaded is not None:
        def init_params(rng, params):
            del rng
            return {**params, "backbone": merge_params(params["backbone"], loaded)}
    task = make_task(model, tx, image_shape=image_shape, detr=cfg.detr, num_eval=num_eval, init_params=init_params,
                     learning_rate=lr, axis_name=form.axis_name, detections=cfg.center_detections)
    names = object_class_names(data.dense_source(cfg.data.dataset))
    task = dataclasses.replace(task, finalize=coco_finalize(num_classes, canvas, names))
    common = dict(data_dir=cfg.data.data_dir, image_size=cfg.data.image_size, max_objects=cfg.data.max_objects,
                  global_batch_size=cfg.global_batch_size)

    def train_data(start_step):
        return _checked(data.dense_batches(cfg.data.dataset, cfg.data.train_split, train=True, seed=cfg.seed,
                                           start_step=start_step, augment=cfg.data.augment, **common), num_classes)

    def eval_data():
        return _with_index(_checked(data.dense_batches(cfg.data.dataset, cfg.data.eval_split, train=False,
                                                       **common), num_classes))

    return loop.train(task, workdir=workdir, train_data=train_data, eval_data=eval_data,
                      eval_prefix=cfg.data.eval_split.split("[")[0], global_batch_size=cfg.global_batch_size,
                      eval_every=cfg.eval_every, parallel_form=form, config=config_lib.to_dict(cfg),
                      **cfg.loop_args())
