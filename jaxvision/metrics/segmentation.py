"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole split.

`confusion_matrix` is a pure JAX function of one batch (jit-able: an evaluation step
returns it and the loop sums it over every batch); `segmentation_metrics` turns the summed
matrix into mIoU, pixel accuracy and per-class IoU on the host. Summing matrices first and
dividing once is the standard protocol (mmsegmentation, Segmenter): a per-batch mean of
IoUs would weigh small batches and rare classes differently.

Pixels whose label is `ignore_index` (default 255) or whose example is padding are not
counted. Labels are checked on the host by `check_labels` (a jitted step cannot raise).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["IGNORE_INDEX", "check_labels", "confusion_matrix", "segmentation_metrics"]

IGNORE_INDEX = 255


def check_labels(labels, num_classes: int, ignore_index: int = IGNORE_INDEX, *, image_shape=None) -> None:
    """A clear error for a label map that does not fit a `num_classes` head, or whose size
    differs from the images' (image_shape: (H, W))."""
    labels = np.asarray(labels)
    if image_shape is not None and tuple(labels.shape[-2:]) != tuple(image_shape):
        raise ValueError(f"segmentation labels are {tuple(labels.shape[-2:])} but the images are "
                         f"{tuple(image_shape)}: masks must have the image's height and width")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"segmentation label {int(labels[bad].flat[0])} is beyond the head's {num_classes} classes "
                         f"(0..{num_classes - 1}, {ignore_index} = ignore): raise num_classes or remap the dataset's "
                         "mask values")


def confusion_matrix(labels, predictions, num_classes: int, *, weights=None, ignore_index: int = IGNORE_INDEX):
    """[num_classes, num_classes] int32 counts: row = true class, column = predicted class.

    labels, predictions: integer maps of the same shape ([B, H, W]); weights: optional
    per-example [B] (or per-pixel) 0/1 mask (eval padding).
    """
    labels = jnp.asarray(labels)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    if weights is not None:
        w = jnp.asarray(weights).astype(bool)
        valid = valid & w.reshape(w.shape + (1,) * (labels.ndim - w.ndim))
    index = jnp.where(valid, labels * num_classes + jnp.clip(predictions, 0, num_classes - 1), 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index.ravel()].add(valid.ravel().astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion, class_names=None) -> dict:
    """{"miou", "pixel_accuracy", "mean_class_accuracy", "iou/<class>"} from a summed matrix.

    IoU_k = TP_k / (TP_k + FP_k + FN_k); mIoU averages it over the classes that occur in
    the labels or the predictions (a class absent from both has no IoU, as in
    mmsegmentation's nanmean).
    """
    cm = np.asarray(confusion, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {cm.shape}")
    if cm.sum() == 0:
        raise ValueError("the confusion matrix is empty: no labelled pixel was evaluated")
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    support = cm.sum(1)
    acc = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    names = list(class_names) if class_names is not None else [str(k) for k in range(len(cm))]
    out = {"miou": float(np.nanmean(iou)), "pixel_accuracy": float(tp.sum() / cm.sum()),
           "mean_class_accuracy": float(np.nanmean(acc))}
    out.update({f"iou/{n}": float(v) for n, v in zip(names, iou) if not np.isnan(v)})
    return out
