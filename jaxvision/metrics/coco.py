"""COCO-style box AP through pycocotools, the standard evaluator (not a reimplementation).

`coco_box_ap` takes the whole evaluation set at once, as padded per-image arrays (what a
detection task's `finalize` receives after the loop has accumulated every batch):

    metrics = coco_box_ap(gt_boxes, gt_labels, gt_valid, det_boxes, det_scores, det_labels,
                          det_valid, image_size=(64, 64), num_classes=10)
    metrics["AP"], metrics["AP50"], metrics["AP75"]

Boxes are ``[xmin, ymin, xmax, ymax]`` in pixels. Bad input, and how it is handled:

* a ground-truth box with negative size, or outside the image (beyond `tolerance` pixels):
  ValueError naming the image and the box (the data is wrong);
* a detection with negative size: ValueError (a head's boxes never have one); detections
  reaching outside the image are clipped to it, and an empty detection stays a false
  positive, as COCOeval counts it;
* a class id outside [0, num_classes) among valid boxes or detections: ValueError;
* an image without ground truth (an empty scene): kept; its detections are false
  positives, as COCOeval counts them. A class without any ground truth is left out of the
  mean (COCOeval's -1). An evaluation set without any ground-truth box: ValueError (AP is
  undefined). No detections at all: AP 0.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

__all__ = ["coco_box_ap"]


def _check_boxes(boxes, valid, what, image_size, tolerance, inside: bool):
    h, w = image_size
    size = boxes[..., 2:] - boxes[..., :2]
    bad = valid & np.any(size < 0, axis=-1)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise ValueError(f"{what} box {k} of image {i} has negative size: {boxes[i, k].tolist()} "
                         "(boxes are [xmin, ymin, xmax, ymax] in pixels; check the box order)")
    if inside:
        out = valid & ((boxes[..., 0] < -tolerance) | (boxes[..., 1] < -tolerance)
                       | (boxes[..., 2] > w + tolerance) | (boxes[..., 3] > h + tolerance))
        if out.any():
            i, k = np.argwhere(out)[0]
            raise ValueError(f"{what} box {k} of image {i} lies outside the {h}x{w} image: "
                             f"{boxes[i, k].tolist()}; boxes are [xmin, ymin, xmax, ymax] in pixels")


def _check_labels(labels, valid, what, num_classes):
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise ValueError(f"{what} {k} of image {i} has class id {int(labels[i, k])}, outside the "
                         f"{num_classes} classes of the head (0..{num_classes - 1})")


def coco_box_ap(gt_boxes, gt_labels, gt_valid, det_boxes, det_scores, det_labels, det_valid, *,
                image_size: tuple[int, int], num_classes: int, tolerance: float = 0.5, class_names=None) -> dict:
    """AP (IoU 0.50:0.95), AP50 and AP75 of COCOeval's "bbox" protocol (101-point
    interpolated precision, at most 100 detections per image), and per class with ground
    truth "AP/<class>" and "AP50/<class>" (COCOeval's per-category precision, averaged as
    its summary averages the categories; `class_names` name them, else "0", "1", ...).

    gt_boxes [N, K, 4], gt_labels [N, K], gt_valid [N, K] (padding False); det_boxes
    [N, D, 4], det_scores [N, D], det_labels [N, D], det_valid [N, D]. Pixels, xyxy.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_boxes, det_boxes = np.asarray(gt_boxes, np.float64), np.asarray(det_boxes, np.float64)
    gt_labels, det_labels = np.asarray(gt_labels), np.asarray(det_labels)
    gt_valid, det_valid = np.asarray(gt_valid, bool), np.asarray(det_valid, bool)
    det_scores = np.asarray(det_scores, np.float64)
    n = gt_boxes.shape[0]
    if det_boxes.shape[0] != n:
        raise ValueError(f"{n} images of ground truth but {det_boxes.shape[0]} of detections")
    h, w = image_size
    _check_boxes(gt_boxes, gt_valid, "ground-truth", image_size, tolerance, inside=True)
    _check_boxes(det_boxes, det_valid, "detection", image_size, tolerance, inside=False)
    _check_labels(gt_labels, gt_valid, "ground-truth box", num_classes)
    _check_labels(det_labels, det_valid, "detection", num_classes)
    if not gt_valid.any():
        raise ValueError("the evaluation set has no ground-truth box: AP is undefined")

    images = [{"id": i + 1, "height": h, "width": w} for i in range(n)]
    annotations = []
    for i, k in zip(*np.nonzero(gt_valid)):
        x0, y0, x1, y1 = gt_boxes[i, k]
        annotations.append({"id": len(annotations) + 1, "image_id": int(i) + 1, "category_id": int(gt_labels[i, k]) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    if not det_valid.any():
        present = sorted(set(gt_labels[gt_valid].tolist()))
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **{f"AP/{names[c]}": 0.0 for c in present},
                **{f"AP50/{names[c]}": 0.0 for c in present}}

    clipped = det_boxes.copy()
    clipped[..., 0::2] = np.clip(clipped[..., 0::2], 0, w)
    clipped[..., 1::2] = np.clip(clipped[..., 1::2], 0, h)
    # image_id, x, y, w, h, score, category: COCO.loadRes's array form
    rows = [[i + 1, *clipped[i, k, :2], *(clipped[i, k, 2:] - clipped[i, k, :2]), det_scores[i, k],
             det_labels[i, k] + 1] for i, k in zip(*np.nonzero(det_valid))]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(np.asarray(rows, np.float64))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(float(s), 0.0) for s in ev.stats[:3])  # -1: nothing to measure
    out = {"AP": ap, "AP50": ap50, "AP75": ap75}
    # precision [IoU thresholds, recall points, categories, area ranges, max dets]: area
    # "all" and 100 detections, as the summary; -1 marks a category without ground truth.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    for c, cat in enumerate(ev.params.catIds):
        p = precision[:, :, c]
        if (p > -1).any():
            out[f"AP/{names[cat - 1]}"] = float(p[p > -1].mean())
            out[f"AP50/{names[cat - 1]}"] = float(p[0][p[0] > -1].mean())
    return out
