"""PNG plots of dense predictions: image | ground truth | prediction, one row per example.

`plot_segmentation`: class maps coloured per class (`class_colors`: background black, one
fixed colour per class, the same in every plot), with a legend of the classes present.
`plot_detection`: boxes drawn on the image with their class names, and scores on the
predicted ones (those above `score_threshold`).

Inputs are NumPy arrays (or anything `np.asarray` takes); images [B, H, W, C] with C 1 or
3, in any range (each image is scaled to [0, 1] by `value_range`, default [-1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["class_colors", "colorize", "plot_detection", "plot_segmentation"]


def class_colors(num_classes: int, background: bool = True) -> np.ndarray:
    """[num_classes, 3] RGB in [0, 1]: class 0 black when `background`, then tab10's colours
    (tab20's beyond 10 classes)."""
    import matplotlib

    n = 10 if num_classes - background <= 10 else 20
    cmap = matplotlib.colormaps[f"tab{n}"]
    colors = np.array([cmap(i % n)[:3] for i in range(num_classes)], np.float64)
    if background:
        colors = np.concatenate([np.zeros((1, 3)), colors[: num_classes - 1]])
    return colors


def colorize(class_map, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] colours; ignored pixels white, ids outside grey."""
    class_map = np.asarray(class_map)
    colors = np.concatenate([class_colors(num_classes), [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]])
    index = np.where((class_map >= 0) & (class_map < num_classes), class_map, num_classes)
    index = np.where(class_map == ignore_index, num_classes + 1, index)
    return colors[index]


def _as_rgb(image, value_range):
    lo, hi = value_range
    x = np.clip((np.asarray(image, np.float64) - lo) / (hi - lo), 0, 1)
    return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x


def _figure(rows: int, cols: int, cell: float = 2.2):
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return plt, fig, axes


def _save(plt, fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_segmentation(images, labels, predictions, path, *, num_classes: int, class_names=None,
                      value_range=(-1.0, 1.0)) -> Path:
    """image | ground truth | prediction for each example; returns the PNG's path."""
    images, labels, predictions = (np.asarray(a) for a in (images, labels, predictions))
    if labels.shape != predictions.shape or labels.shape[:3] != images.shape[:3]:
        raise ValueError(f"images {images.shape}, labels {labels.shape} and predictions {predictions.shape} must "
                         "share batch, height and width")
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    plt, fig, axes = _figure(len(images), 3)
    for i in range(len(images)):
        for ax, pic, title in zip(axes[i], (_as_rgb(images[i], value_range), colorize(labels[i], num_classes),
                                            colorize(predictions[i], num_classes)),
                                  ("image", "ground truth", "prediction")):
            ax.imshow(pic, interpolation="nearest")
            if i == 0:
                ax.set_title(title)
    present = sorted(set(np.unique(labels)) | set(np.unique(predictions)))
    colors = class_colors(num_classes)
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[k], label=names[k]) for k in present if 0 <= k < num_classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(plt, fig, path)


def _draw_boxes(ax, boxes, labels, scores, height, width, names, colors):
    from matplotlib.patches import Rectangle

    for j, (box, label) in enumerate(zip(boxes, labels)):
        ymin, xmin, ymax, xmax = np.asarray(box, np.float64) * [height, width, height, width]
        color = colors[int(label) % len(colors)]
        # Pixel edges: a box [r0/H, (r1+1)/H] covers rows r0..r1, drawn from r0-0.5 to r1+0.5.
        ax.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin, fill=False, lw=1.2,
                               edgecolor=color))
        text = names[int(label)] if 0 <= int(label) < len(names) else str(int(label))
        if scores is not None:
            text += f" {float(scores[j]):.2f}"
        ax.text(xmin - 0.5, ymin - 1, text, fontsize=5, color="white", va="bottom",
                bbox=dict(facecolor=color, alpha=0.8, pad=0.5, lw=0))


def plot_detection(images, gt_boxes, gt_labels, gt_valid, pred_boxes, pred_labels, pred_scores, path, *,
                   class_names=None, score_threshold: float = 0.5, value_range=(-1.0, 1.0)) -> Path:
    """image | ground truth | prediction with boxes; boxes normalised [ymin, xmin, ymax, xmax]
    (tfds BBoxFeature); gt_valid [B, M] marks real ground-truth rows; predictions with a
    score below `score_threshold` are not drawn."""
    images = np.asarray(images)
    n, height, width = images.shape[:3]
    num_labels = int(max(np.max(gt_labels, initial=0), np.max(pred_labels, initial=0))) + 1
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_labels)]
    colors = class_colors(max(len(names), num_labels), background=False)
    plt, fig, axes = _figure(n, 3)
    for i in range(n):
        rgb = _as_rgb(images[i], value_range)
        for ax, title in zip(axes[i], ("image", "ground truth", "prediction")):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            if i == 0:
                ax.set_title(title)
        valid = np.asarray(gt_valid[i], bool)
        _draw_boxes(axes[i][1], np.asarray(gt_boxes[i])[valid], np.asarray(gt_labels[i])[valid], None, height, width,
                    names, colors)
        keep = np.asarray(pred_scores[i]) >= score_threshold
        _draw_boxes(axes[i][2], np.asarray(pred_boxes[i])[keep], np.asarray(pred_labels[i])[keep],
                    np.asarray(pred_scores[i])[keep], height, width, names, colors)
    fig.tight_layout()
    return _save(plt, fig, path)
