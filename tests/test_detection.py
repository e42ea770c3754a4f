"""Detection: box ops, the in-step Hungarian matching (against scipy), DETR's set loss
(against NumPy), the DETR head, and the task's evaluation buffers and pretrained init."""

import itertools
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from jaxvision.losses import detection as D
from jaxvision.models.detr import DETR
from jaxvision.tasks import classification as cls
from jaxvision.tasks import detection as det
from jaxvision.train import loop

from helpers import tree_equal


def _np_giou(a, b):  # one pair of xyxy boxes, the textbook formula
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_box_conversions_and_giou_against_numpy():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, (6, 2))
    xyxy = np.concatenate([lo, lo + rng.uniform(0.05, 0.5, (6, 2))], 1).astype(np.float32)
    np.testing.assert_allclose(D.cxcywh_to_xyxy(D.xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-6)
    yxyx = xyxy[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(D.yxyx_to_cxcywh(yxyx), D.xyxy_to_cxcywh(xyxy), atol=1e-6)
    giou = np.asarray(D.generalized_box_iou(xyxy, xyxy[::-1]))
    expected = [[_np_giou(a, b) for b in xyxy[::-1]] for a in xyxy]
    np.testing.assert_allclose(giou, expected, atol=1e-5)
    np.testing.assert_allclose(np.diag(np.asarray(D.pairwise_box_iou(xyxy, xyxy)[0])), 1.0, atol=1e-6)


def test_hungarian_matches_scipy():
    for n, m in [(5, 5), (6, 13)]:
        costs = np.random.default_rng(n * 100 + m).normal(size=(32, n, m)).astype(np.float32)
        cols = np.asarray(jax.jit(jax.vmap(D.linear_sum_assignment))(costs))
        for c, got in zip(costs, cols):
            rows, ref = scipy_lsa(c)
            assert len(set(got.tolist())) == n  # a valid assignment
            np.testing.assert_array_equal(got, ref)  # random costs: the optimum is unique


def test_hungarian_rejects_more_rows_than_columns():
    with pytest.raises(ValueError, match="rows <= columns"):
        D.linear_sum_assignment(jnp.zeros((3, 2)))


SET_LOSS = jax.jit(D.set_loss)  # eager, the matching's lax loops dispatch op by op


def _targets():
    boxes = np.array([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2], [0, 0, 0, 0]],
                      [[0.5, 0.5, 0.4, 0.6], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[2, 0, 0], [1, 0, 0]], np.int32)
    valid = np.array([[True, True, False], [True, False, False]])
    return labels, boxes, valid


def test_set_loss_of_a_perfect_prediction_against_numpy():
    labels, boxes, valid = _targets()
    q, c = 4, 3
    slot = [[2, 0], [3]]  # the query that holds each target (the matcher must find them)
    rng = np.random.default_rng(1)
    pred_boxes = rng.uniform(0.2, 0.8, (2, q, 4)).astype(np.float32) * [1, 1, 0.3, 0.3]
    logits = np.full((2, q, c + 1), 0.0, np.float32)
    logits[..., c] = 1.0  # no-object everywhere else
    classes = np.full((2, q), c)
    for b in range(2):
        for k, j in enumerate(slot[b]):
            pred_boxes[b, j], logits[b, j, labels[b, k]] = boxes[b, k], 8.0
            classes[b, j] = labels[b, k]
    loss, m = SET_LOSS(jnp.stack([logits] * 2), jnp.stack([pred_boxes] * 2), labels, boxes, valid)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, classes[..., None], -1)[..., 0]
    w = np.where(classes == c, 0.1, 1.0)
    expected_ce = (w * ce).sum() / w.sum()
    np.testing.assert_allclose(m["loss_ce"], expected_ce, rtol=1e-5)
    np.testing.assert_allclose([m["loss_l1"], m["loss_giou"]], [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(loss, 2 * expected_ce, rtol=1e-5)  # two layers, each its own loss


def test_set_loss_box_terms_against_numpy_and_target_order_invariance():
    labels, boxes, valid = _targets()
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
    pred = rng.uniform(0.2, 0.6, (1, 2, 3, 4)).astype(np.float32)
    _, m = SET_LOSS(logits, pred, labels, boxes, valid)
    # brute force over every assignment of targets to queries with DETR's cost
    l1s, gious = [], []
    for b in range(2):
        k = valid[b].sum()
        best = None
        for perm in itertools.permutations(range(3), int(k)):
            prob = np.exp(logits[0, b]) / np.exp(logits[0, b]).sum(-1, keepdims=True)
            cost = sum(-prob[j, labels[b, t]] + 5 * np.abs(pred[0, b, j] - boxes[b, t]).sum()
                       - 2 * _np_giou(np.asarray(D.cxcywh_to_xyxy(pred[0, b, j])), np.asarray(D.cxcywh_to_xyxy(boxes[b, t])))
                       for t, j in enumerate(perm))
            if best is None or cost < best[0]:
                best = (cost, perm)
        for t, j in enumerate(best[1]):
            l1s.append(np.abs(pred[0, b, j] - boxes[b, t]).sum())
            gious.append(1 - _np_giou(np.asarray(D.cxcywh_to_xyxy(pred[0, b, j])),
                                      np.asarray(D.cxcywh_to_xyxy(boxes[b, t]))))
    np.testing.assert_allclose(m["loss_l1"], np.sum(l1s) / 3, rtol=1e-5)
    np.testing.assert_allclose(m["loss_giou"], np.sum(gious) / 3, rtol=1e-5)
    flip = [1, 0, 2]  # the same objects listed in another order
    _, m2 = SET_LOSS(logits, pred, labels[:, flip], boxes[:, flip], valid[:, flip])
    np.testing.assert_allclose([m2[k] for k in sorted(m2)], [m[k] for k in sorted(m)], rtol=1e-6)


TINY = dict(variant="Ti/4", width=16, depth=1, mlp_dim=32, num_heads=2, pool="gap")


@pytest.fixture(scope="module")
def tiny_task():
    # width 24 != 16 tokens: flax warns when an attention value's last two sizes are equal
    vit = cls.build_model(cls.ModelConfig(**dict(TINY, width=24)), num_classes=0)
    model = DETR(backbone=vit, num_classes=3, num_queries=4, decoder_layers=1, num_heads=2)
    return det.make_task(model, optax.adam(1e-3), image_shape=(16, 16, 1), detr=det.DetrConfig(), num_eval=5)


def _batch(n, start, mask=None):
    labels, boxes, valid = _targets()
    rng = np.random.default_rng(start)
    xyxy = D.cxcywh_to_xyxy(boxes[np.arange(n) % 2])
    return {"image": rng.normal(size=(n, 16, 16, 1)).astype(np.float32),
            "boxes": np.asarray(xyxy)[..., [1, 0, 3, 2]], "labels": (labels[np.arange(n) % 2] + start) % 3,
            "valid": valid[np.arange(n) % 2], "index": np.arange(start, start + n, dtype=np.int32),
            "mask": np.ones(n, bool) if mask is None else mask}


def test_detr_step_and_eval_buffers_cover_the_split(tiny_task):
    state = tiny_task.init(jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(tiny_task.train_step)(state, _batch(3, 0))
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
    # 5 eval images in batches of 3: the second batch has one padding example.
    batches = [_batch(3, 0), _batch(3, 3, mask=np.array([True, True, False]))]
    batches[1]["index"][2] = 5  # what _with_index gives a padding example: out of range
    form = type("Form", (), {"put_batch": staticmethod(lambda b: b)})()
    totals = {}
    stats = loop.evaluate(jax.jit(tiny_task.eval_step), state, batches, form, "test",
                          finalize=lambda t: totals.update(t) or {})
    assert stats == {}
    want_labels = np.concatenate([batches[0]["labels"], batches[1]["labels"][:2]])
    np.testing.assert_array_equal(totals["gt_labels"], want_labels)
    np.testing.assert_array_equal(totals["seen"], np.ones(5))
    gt = np.concatenate([b["boxes"] for b in batches])[:5][..., [1, 0, 3, 2]]
    np.testing.assert_allclose(totals["gt_boxes"], gt, atol=1e-6)
    metrics = det.coco_finalize(3, (16, 16))(totals)
    assert set(metrics) >= {"AP", "AP50", "AP75"} and 0.0 <= metrics["AP"] <= 1.0
    with pytest.raises(ValueError, match="once"):
        det.coco_finalize(3, (16, 16))({**totals, "seen": totals["seen"] * 2})


def test_backbone_from_a_classifier_run(tmp_path):
    from jaxvision import config as config_lib
    from helpers import tiny_task as tiny_cls_task
    from jaxvision.train import load_params

    from jaxvision.train.checkpoint import Checkpointer

    vit_cfg = cls.ModelConfig(**TINY)  # = helpers.tiny_vit: a classifier run's folder, without training it
    (tmp_path / "config.json").write_text(json.dumps({"model": config_lib.to_dict(vit_cfg)}))
    state = tiny_cls_task(total_steps=2).init(jax.random.PRNGKey(0))
    checkpointer = Checkpointer(tmp_path / "checkpoints", save_every=1)
    checkpointer.save(1, state, {"step": 1}, force=True)
    checkpointer.close()
    cfg, loaded = det.backbone_from_run(str(tmp_path), vit_cfg, (16, 16, 1), log=lambda m: None)
    assert cfg.patch_dropout == 0.0
    source = load_params(tmp_path)
    assert "head" in source and "head" not in loaded
    posemb = "Transformer/posembed_input/pos_embedding"
    assert loaded["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 16, 16), posemb  # 2x2 -> 4x4
    drop = lambda t: {k: v for k, v in t.items() if k not in ("head", "Transformer")}  # noqa: E731
    assert tree_equal(drop(source), drop(loaded))
    with pytest.raises(FileNotFoundError, match="not a jaxvision run"):
        det.backbone_from_run(str(tmp_path / "nowhere"), vit_cfg, (16, 16, 1))


def test_center_targets_loss_and_peaks_against_numpy():
    g, c = 4, 2
    boxes = np.array([[[0.55, 0.30, 0.30, 0.60], [0, 0, 0, 0]]], np.float32)  # cxcywh
    labels, valid = np.array([[1, 0]], np.int32), np.array([[True, False]])
    heat, cell = jax.jit(D.center_targets, static_argnums=(3, 4, 5))(boxes, labels, valid, g, g, c)
    row, col = 1, 2  # floor(0.30 * 4), floor(0.55 * 4)
    yy, xx = np.mgrid[:g, :g]
    sx, sy = max(0.30 * g / 6, 0.5), max(0.60 * g / 6, 0.5)
    expected = np.exp(-((xx - col) ** 2 / (2 * sx ** 2) + (yy - row) ** 2 / (2 * sy ** 2)))
    np.testing.assert_allclose(heat[0, ..., 1], expected, rtol=1e-5)
    np.testing.assert_array_equal(heat[0, ..., 0], 0.0)
    assert int(cell[0, 0]) == row * g + col

    # A box regression exact at the centre cell: L1 and GIoU losses 0; the heatmap term is
    # CenterNet's penalty-reduced focal loss, computed here in NumPy.
    centre = np.array([(col + 0.5) / g, (row + 0.5) / g])
    x0y0, x1y1 = boxes[0, 0, :2] - boxes[0, 0, 2:] / 2, boxes[0, 0, :2] + boxes[0, 0, 2:] / 2
    ltrb = np.full((1, g, g, 4), 0.1, np.float32)
    ltrb[0, row, col] = np.concatenate([centre - x0y0, x1y1 - centre])
    logits = np.random.default_rng(3).normal(size=(1, g, g, c)).astype(np.float32)
    loss, m = jax.jit(D.center_loss)(logits, ltrb, labels, boxes, valid)
    p, y = 1 / (1 + np.exp(-logits)), np.asarray(heat)
    focal = np.where(y == 1, (1 - p) ** 2 * np.log(p), (1 - y) ** 4 * p ** 2 * np.log(1 - p))
    np.testing.assert_allclose(m["loss_heatmap"], -focal.sum(), rtol=1e-4)
    np.testing.assert_allclose([m["loss_l1"], m["loss_giou"]], [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(loss, -focal.sum(), rtol=1e-4)

    # Peaks: (1, 2) class 1 beats its neighbour (1, 1); (3, 0) class 0 is a second peak.
    hm = np.full((1, g, g, c), -9.0, np.float32)
    hm[0, 1, 2, 1], hm[0, 1, 1, 1], hm[0, 3, 0, 0] = 3.0, 2.0, 1.0
    out_boxes, scores, classes = jax.jit(D.center_detections, static_argnums=2)(hm, ltrb, 3)
    np.testing.assert_allclose(scores[0, :2], 1 / (1 + np.exp(-np.array([3.0, 1.0]))), rtol=1e-6)
    np.testing.assert_array_equal(classes[0, :2], [1, 0])
    np.testing.assert_allclose(out_boxes[0, 0], np.concatenate([x0y0, x1y1]), atol=1e-6)
    assert float(scores[0, 2]) < 1e-3  # the neighbour (1, 1) is suppressed, not third


def test_center_head_grids_and_output_upsampling_against_numpy():
    from jaxvision.models.detr import CenterDetector

    vit = cls.build_model(cls.ModelConfig(**dict(TINY, width=24)), num_classes=0)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)  # 4x4 tokens
    grids = {}
    for upsample in ("features", "outputs", "none"):  # shapes only: no compile
        model = CenterDetector(backbone=vit, num_classes=3, head_dim=8, upsample=upsample)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
        out = jax.eval_shape(model.apply, {"params": params}, images)[0]
        grids[upsample] = (out["heatmap"].shape, out["ltrb"].shape)
        if upsample == "features":  # the original layout: checkpoints of earlier runs still load
            assert params["upsample"]["kernel"].shape == (2, 2, 24, 8) and "project" not in params
    assert grids == {"features": ((2, 8, 8, 3), (2, 8, 8, 4)), "outputs": ((2, 8, 8, 3), (2, 8, 8, 4)),
                     "none": ((2, 4, 4, 3), (2, 4, 4, 4))}

    # "outputs": each token-grid cell's features h give a 2x2 block of the output grid,
    # out[2i+a, 2j+b] = relu(h) @ K[1-a, 1-b] + bias (flax's transposed conv, unflipped).
    model = CenterDetector(backbone=vit, num_classes=3, head_dim=8, upsample="outputs")
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images)["params"]
    (out, _), inter = jax.jit(partial(model.apply, capture_intermediates=True))({"params": params}, images)
    k, bias = np.asarray(params["heatmap_out"]["kernel"]), np.asarray(params["heatmap_out"]["bias"])
    assert k.shape == (2, 2, 8, 3)
    np.testing.assert_allclose(bias, -2.19)
    h = np.maximum(np.asarray(inter["intermediates"]["heatmap_conv"]["__call__"][0]), 0)
    want = np.zeros((2, 8, 8, 3), np.float32)
    for a, b in itertools.product(range(2), range(2)):
        want[:, a::2, b::2] = h @ k[1 - a, 1 - b] + bias
    np.testing.assert_allclose(out["heatmap"], want, rtol=1e-5, atol=1e-5)
    assert float(jnp.min(out["ltrb"])) > 0  # distances stay positive
    with pytest.raises(ValueError, match="upsample must be"):
        CenterDetector(backbone=vit, num_classes=3, upsample="bilinear").init(jax.random.PRNGKey(0), images)


@pytest.mark.parametrize("field, value, message", [
    ("labels", 7, "class id 7"), ("boxes", [0.5, 0.1, 0.2, 0.3], "ymin <= ymax"), ("boxes", [0, 0, 1.5, 1], "inside"),
])
def test_bad_batches_are_clear_errors(field, value, message):
    batch = _batch(2, 0)
    assert list(det._checked([batch], 3))  # a good batch passes unchanged
    batch[field] = batch[field].astype(np.float32 if field == "boxes" else np.int32).copy()
    batch[field][1, 0] = value
    with pytest.raises(ValueError, match=message):
        list(det._checked([batch], 3))
