"""COCO box AP through pycocotools on hand-made boxes with AP computed by hand."""

import numpy as np
import pytest

from jaxvision.metrics.coco import coco_box_ap

SIZE = (64, 64)


def _pad(rows, width):
    """Per-image lists of tuples -> padded arrays and a validity mask."""
    n, k = len(rows), max(1, max(len(r) for r in rows))
    out = np.zeros((n, k, width))
    valid = np.zeros((n, k), bool)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            out[i, j], valid[i, j] = v, True
    return out, valid


def _ap(gt, det, num_classes=3, per_class=False, **kwargs):
    g, gv = _pad(gt, 5)  # (x0, y0, x1, y1, label)
    d, dv = _pad(det, 6)  # (x0, y0, x1, y1, score, label)
    out = coco_box_ap(g[..., :4], g[..., 4].astype(int), gv, d[..., :4], d[..., 4], d[..., 5].astype(int), dv,
                      image_size=SIZE, num_classes=num_classes, **kwargs)
    return out if per_class else {k: out[k] for k in ("AP", "AP50", "AP75")}


GT = [[(4, 4, 20, 24, 0), (30, 30, 60, 50, 1)], [(10, 10, 30, 40, 0)], []]  # the third image is empty


def test_perfect_detections_score_one():
    det = [[(*b[:4], 0.9, b[4]) for b in img] for img in GT]
    assert _ap(GT, det) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_tp_fp_mix_matches_hand_computed_101_point_ap():
    # One class, two objects. Ranked: TP (0.9), FP (0.8, on the empty image), TP (0.7).
    # Precision after each: 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated (max to the
    # right): 1 for the 51 recall points 0..0.50, 2/3 for the 50 points 0.51..1.
    gt = [[(4, 4, 20, 24, 0)], [(10, 10, 30, 40, 0)], []]
    det = [[(4, 4, 20, 24, 0.9, 0)], [(10, 10, 30, 40, 0.7, 0)], [(40, 40, 50, 50, 0.8, 0)]]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert _ap(gt, det, num_classes=1) == pytest.approx({"AP": expected, "AP50": expected, "AP75": expected})


def test_loose_box_counts_only_at_low_iou_thresholds():
    # The box widened from x1=20 to x1=30: IoU = (16*20) / (26*20) = 0.615, so
    # a true positive at IoU 0.50, 0.55, 0.60 (3 of the 10 thresholds), a miss from 0.65 on.
    gt = [[(4, 4, 20, 24, 0)]]
    det = [[(4, 4, 30, 24, 0.9, 0)]]
    assert _ap(gt, det, num_classes=1) == pytest.approx({"AP": 0.3, "AP50": 1.0, "AP75": 0.0})


def test_wrong_class_is_a_miss_and_classes_without_gt_are_left_out():
    det = [[(4, 4, 20, 24, 0.9, 2), (30, 30, 60, 50, 0.8, 1)], [(10, 10, 30, 40, 0.9, 0)], []]
    # class 0: 1 of 2 found, at rank 1 -> AP 51/101 (recall <= 0.5); class 1: 1.0;
    # class 2 has no ground truth (only a false positive): COCO leaves it out of the mean.
    expected = (51 / 101 + 1.0) / 2
    assert _ap(GT, det)["AP50"] == pytest.approx(expected)


def test_per_class_ap_names_the_classes_with_ground_truth():
    # class 0: its two objects found exactly at ranks 1 and 3 of its detections (a false
    # positive on the empty image between them); class 1: perfect; class 2: no ground truth.
    gt = [[(4, 4, 20, 24, 0), (30, 30, 60, 50, 1)], [(10, 10, 30, 40, 0)], []]
    det = [[(4, 4, 20, 24, 0.9, 0), (30, 30, 60, 50, 0.8, 1)], [(10, 10, 30, 40, 0.5, 0)],
           [(40, 40, 50, 50, 0.7, 0), (40, 40, 50, 50, 0.7, 2)]]
    out = _ap(gt, det, per_class=True, class_names=["top", "trouser", "bag"])
    ap50_top = (51 * 1.0 + 50 * 2 / 3) / 101  # ranked TP, FP, TP: as the hand-computed mix above
    assert set(out) == {"AP", "AP50", "AP75", "AP/top", "AP50/top", "AP/trouser", "AP50/trouser"}
    assert out["AP50/top"] == pytest.approx(ap50_top) and out["AP/top"] == pytest.approx(ap50_top)
    assert out["AP50/trouser"] == pytest.approx(1.0) and out["AP/trouser"] == pytest.approx(1.0)
    assert out["AP50"] == pytest.approx((ap50_top + 1.0) / 2)  # the summary averages the same classes
    none = _ap(gt, [[], [], []], per_class=True)
    assert none == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP/0": 0.0, "AP50/0": 0.0, "AP/1": 0.0, "AP50/1": 0.0}
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        _ap(gt, det, class_names=["top", "trouser"])


def test_no_detections_is_zero_and_detections_outside_are_clipped():
    assert _ap(GT, [[], [], []]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # A perfect box drawn past the image edge counts once clipped.
    gt = [[(40, 30, 64, 50, 0)]]
    assert _ap(gt, [[(40, 30, 80, 50, 0.9, 0)]])["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("gt, det, message", [
    ([[(4, 4, 2, 24, 0)]], [[]], "negative size"),
    ([[(4, 4, 80, 24, 0)]], [[]], "outside the 64x64 image"),
    ([[(4, 4, 20, 24, 5)]], [[]], "class id 5"),
    ([[(4, 4, 20, 24, 0)]], [[(4, 4, 20, 24, 0.5, 3)]], "class id 3"),
    ([[(4, 4, 20, 24, 0)]], [[(4, 4, 2, 24, 0.5, 0)]], "negative size"),
    ([[]], [[(4, 4, 20, 24, 0.5, 0)]], "no ground-truth box"),
])
def test_bad_input_is_a_clear_error(gt, det, message):
    with pytest.raises(ValueError, match=message):
        _ap(gt, det)
