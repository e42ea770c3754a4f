"""Set-prediction detection losses (DETR, Carion et al. 2020) as pure JAX functions.

Boxes are normalised to the image: the model predicts ``[cx, cy, w, h]`` in [0, 1]; the
data pipeline gives ``[ymin, xmin, ymax, xmax]`` (tfds order), and COCO wants
``[x, y, w, h]`` in pixels. The helpers below convert between them.

Matching is done **inside the jitted step** by an exact Hungarian algorithm written with
``lax`` loops (`linear_sum_assignment`), vmapped over the batch. Why not on the host or
through ``jax.pure_callback`` to scipy: the step stays one pure XLA program (no host round
trip per step, no callback the pmap / mesh forms or a GPU would have to synchronise on),
it is deterministic bit for bit like the rest of the step, and at DETR's sizes (tens of
queries, a handful of targets) the O(targets^2 x queries) loop costs far less than the
model. The costs are DETR's: class 1 (minus the matched class's probability), L1 5 (on
``cx, cy, w, h``), GIoU 2 (minus the generalised IoU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "box_area", "cxcywh_to_xyxy", "detr_cost_matrix", "generalized_box_iou", "hungarian_match",
    "linear_sum_assignment", "pairwise_box_iou", "set_loss", "xyxy_to_cxcywh", "yxyx_to_cxcywh",
    "cell_centers", "center_detections", "center_loss", "center_targets", "decode_ltrb",
]


def cxcywh_to_xyxy(boxes):
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(boxes):
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def yxyx_to_cxcywh(boxes):
    """tfds / data-pipeline order [ymin, xmin, ymax, xmax] -> [cx, cy, w, h]."""
    y0, x0, y1, x1 = jnp.moveaxis(boxes, -1, 0)
    return xyxy_to_cxcywh(jnp.stack([x0, y0, x1, y1], axis=-1))


def box_area(xyxy):
    return (xyxy[..., 2] - xyxy[..., 0]) * (xyxy[..., 3] - xyxy[..., 1])


def pairwise_box_iou(a, b):
    """IoU and union of every pair: a [N, 4], b [M, 4] xyxy -> ([N, M], [N, M])."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / jnp.maximum(union, 1e-9), union


def generalized_box_iou(a, b):
    """GIoU (Rezatofighi et al. 2019) of every pair of xyxy boxes: [N, 4], [M, 4] -> [N, M]."""
    iou, union = pairwise_box_iou(a, b)
    lt = jnp.minimum(a[:, None, :2], b[None, :, :2])
    rb = jnp.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / jnp.maximum(hull, 1e-9)


def linear_sum_assignment(cost):
    """Exact minimum-cost assignment of every row of `cost` [n, m] (n <= m) to a distinct
    column: the Hungarian algorithm with potentials (Kuhn-Munkres, shortest augmenting
    paths, O(n^2 m)) in `lax` loops, so it runs inside `jit` and under `vmap`.
    Returns col_of_row [n] int32 (the same optimum as scipy.optimize.linear_sum_assignment;
    with ties, possibly another optimal assignment)."""
    n, m = cost.shape
    if n > m:
        raise ValueError(f"linear_sum_assignment needs rows <= columns, got a {n}x{m} cost matrix: "
                         "transpose it (more targets than queries: raise the number of queries)")
    cost = cost.astype(jnp.float32)
    # 1-indexed as in the textbook form: row/column 0 is the virtual start of each path.
    a = jnp.zeros((n + 1, m + 1), jnp.float32).at[1:, 1:].set(cost)
    big = jnp.float32(jnp.finfo(jnp.float32).max / 4)
    cols = jnp.arange(m + 1)

    def add_row(i, carry):
        u, v, p, way = carry
        p = p.at[0].set(i)

        def grow_cond(c):
            _, _, p, _, _, _, j0 = c
            return p[j0] != 0

        def grow(c):
            u, v, p, way, minv, used, j0 = c
            used = used.at[j0].set(True)
            i0 = p[j0]
            cur = a[i0] - u[i0] - v
            better = (~used) & (cur < minv)
            minv = jnp.where(better, cur, minv)
            way = jnp.where(better, j0, way)
            masked = jnp.where(used | (cols == 0), big, minv)
            j1 = jnp.argmin(masked)
            delta = masked[j1]
            u = u.at[p].add(jnp.where(used, delta, 0.0))  # the rows on the path (distinct)
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(used, minv, minv - delta)
            return u, v, p, way, minv, used, j1

        minv = jnp.full((m + 1,), big)
        used = jnp.zeros((m + 1,), bool)
        u, v, p, way, _, _, j0 = jax.lax.while_loop(grow_cond, grow, (u, v, p, way, minv, used, jnp.int32(0)))

        def flip(c):  # augment along the path back to the virtual column 0
            p, j0 = c
            j1 = way[j0]
            return p.at[j0].set(p[j1]), j1

        p, _ = jax.lax.while_loop(lambda c: c[1] != 0, flip, (p, j0))
        return u, v, p, way

    init = (jnp.zeros(n + 1), jnp.zeros(m + 1), jnp.zeros(m + 1, jnp.int32), jnp.zeros(m + 1, jnp.int32))
    _, _, p, _ = jax.lax.fori_loop(1, n + 1, add_row, init)
    # p[j] = the (1-based) row on column j, 0 = free; invert to the column of each row.
    rows = jnp.where(p[1:] > 0, p[1:] - 1, n)  # n: out of range, dropped
    return jnp.zeros(n, jnp.int32).at[rows].set(jnp.arange(m, dtype=jnp.int32), mode="drop")


def detr_cost_matrix(logits, boxes, labels, target_boxes, valid, *, class_weight=1.0, l1_weight=5.0,
                     giou_weight=2.0):
    """DETR's matching cost for one image, targets x queries [K, Q].

    logits [Q, C+1] (last = no object), boxes [Q, 4] cxcywh; labels [K], target_boxes [K, 4]
    cxcywh, valid [K]. Rows of padding targets are 0: with K <= Q they cannot change the
    optimal assignment of the real ones (any assignment of the real rows extends to the
    padding rows at the same constant cost)."""
    prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    cost_class = -prob[:, labels].T  # [K, Q]
    cost_l1 = jnp.abs(target_boxes[:, None, :] - boxes[None, :, :]).sum(-1)
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(target_boxes), cxcywh_to_xyxy(boxes))
    cost = class_weight * cost_class + l1_weight * cost_l1 + giou_weight * cost_giou
    return jnp.where(valid[:, None], cost, 0.0)


def hungarian_match(logits, boxes, labels, target_boxes, valid, **weights):
    """Batched matching: [B, Q, C+1], [B, Q, 4], [B, K], [B, K, 4], [B, K] -> the query
    matched to each target [B, K] int32 (meaningless where not valid). No gradient flows
    through the assignment."""
    cost = jax.vmap(lambda *a: detr_cost_matrix(*a, **weights))(
        jax.lax.stop_gradient(logits), jax.lax.stop_gradient(boxes), labels, target_boxes, valid)
    return jax.vmap(linear_sum_assignment)(cost)


def _layer_loss(logits, boxes, labels, target_boxes, valid, num_boxes, *, eos_coef, weights):
    b, q, c1 = logits.shape
    query = hungarian_match(logits, boxes, labels, target_boxes, valid, **weights)  # [B, K]
    batch_idx = jnp.broadcast_to(jnp.arange(b)[:, None], query.shape)
    # Targets per query: no-object (index C) except where a real target was matched.
    no_object = c1 - 1
    classes = jnp.full((b, q), no_object, jnp.int32)
    classes = classes.at[batch_idx, jnp.where(valid, query, q)].set(labels.astype(jnp.int32), mode="drop")
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), classes)
    w = jnp.where(classes == no_object, eos_coef, 1.0)
    # PyTorch's weighted cross-entropy mean, as DETR uses it: sum(w * ce) / sum(w).
    loss_ce = jnp.sum(w * ce) / jnp.sum(w)

    matched = boxes[batch_idx, query]  # [B, K, 4], the prediction for each target
    vf = valid.astype(jnp.float32)
    loss_l1 = jnp.sum(jnp.abs(matched - target_boxes).sum(-1) * vf) / num_boxes
    giou = jax.vmap(jax.vmap(lambda p, t: generalized_box_iou(p[None], t[None])[0, 0]))(
        cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target_boxes))
    loss_giou = jnp.sum((1.0 - giou) * vf) / num_boxes
    total = weights["class_weight"] * loss_ce + weights["l1_weight"] * loss_l1 + weights["giou_weight"] * loss_giou
    return total, {"loss_ce": loss_ce, "loss_l1": loss_l1, "loss_giou": loss_giou}


def set_loss(logits, boxes, labels, target_boxes, valid, *, eos_coef=0.1, class_weight=1.0, l1_weight=5.0,
             giou_weight=2.0, axis_name=None):
    """DETR's set loss, summed over decoder layers (the last plus the auxiliary ones).

    logits [L, B, Q, C+1] and boxes [L, B, Q, 4] (cxcywh, in [0, 1]) per decoder layer;
    labels [B, K] int, target_boxes [B, K, 4] cxcywh, valid [B, K] bool (padding rows
    False). Each layer is matched on its own. The loss weights equal the matching costs
    (DETR: class 1, L1 5, GIoU 2); the no-object class weighs `eos_coef` in the
    cross-entropy. Box losses are normalised by the number of real boxes in the batch
    (summed over `axis_name` devices when given, as DETR does across processes).
    Returns (loss, metrics of the last layer)."""
    if logits.ndim != 4 or boxes.shape[:3] != logits.shape[:3]:
        raise ValueError(f"set_loss wants per-layer logits [L, B, Q, C+1] and boxes [L, B, Q, 4], got "
                         f"{logits.shape} and {boxes.shape}")
    if target_boxes.shape[1] > logits.shape[2]:
        raise ValueError(f"{target_boxes.shape[1]} target slots but only {logits.shape[2]} queries: "
                         "use at least as many queries as the most objects in an image")
    weights = dict(class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight)
    num_boxes = jnp.sum(valid.astype(jnp.float32))
    if axis_name is not None:
        num_boxes = jax.lax.psum(num_boxes, axis_name) / jax.lax.psum(1, axis_name)
    num_boxes = jnp.maximum(num_boxes, 1.0)
    total, metrics = 0.0, {}
    for layer in range(logits.shape[0]):
        loss, metrics = _layer_loss(logits[layer], boxes[layer], labels, target_boxes, valid, num_boxes,
                                    eos_coef=eos_coef, weights=weights)
        total = total + loss
    return total, metrics


# --- the dense alternative: CenterNet-style centre heatmaps on a cell grid ---------------

def cell_centers(gh: int, gw: int):
    """[gh, gw, 2] normalised (x, y) of each cell's centre."""
    ys = (jnp.arange(gh) + 0.5) / gh
    xs = (jnp.arange(gw) + 0.5) / gw
    return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), -1)


def center_targets(target_boxes, labels, valid, gh: int, gw: int, num_classes: int, min_sigma: float = 0.5):
    """CenterNet's targets on a gh x gw grid: heatmap [B, gh, gw, C] (a Gaussian around each
    object's centre cell, sigma = its size / 6 in cells (at least `min_sigma`), exactly 1 at
    the cell holding the centre; the maximum where objects of a class overlap) and each
    object's centre cell [B, K] (flat index). target_boxes [B, K, 4] cxcywh."""
    cx, cy, w, h = jnp.moveaxis(target_boxes, -1, 0)
    col = jnp.clip(jnp.floor(cx * gw), 0, gw - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cy * gh), 0, gh - 1).astype(jnp.int32)
    sig_x = jnp.maximum(w * gw / 6, min_sigma)[..., None, None]
    sig_y = jnp.maximum(h * gh / 6, min_sigma)[..., None, None]
    yy, xx = jnp.arange(gh)[:, None], jnp.arange(gw)[None, :]
    g = jnp.exp(-((xx - col[..., None, None]) ** 2 / (2 * sig_x ** 2) + (yy - row[..., None, None]) ** 2
                  / (2 * sig_y ** 2)))  # [B, K, gh, gw]; exactly 1 at the centre cell
    g = g * valid[..., None, None]
    onehot = jax.nn.one_hot(labels, num_classes) * valid[..., None]  # [B, K, C]
    heat = jnp.max(g[..., None] * onehot[:, :, None, None, :], axis=1)
    return heat, row * gw + col


def center_loss(heatmap_logits, ltrb, labels, target_boxes, valid, *, l1_weight=5.0, giou_weight=2.0,
                alpha=2.0, beta=4.0):
    """CenterNet's penalty-reduced focal loss on the heatmap (normalised by the number of
    objects) plus, at each object's centre cell, L1 and GIoU losses of the box the cell
    predicts (its centre minus / plus the predicted side distances). Returns (loss, metrics).
    heatmap_logits [B, gh, gw, C], ltrb [B, gh, gw, 4]; targets as in `set_loss`."""
    b, gh, gw, c = heatmap_logits.shape
    heat, cell = center_targets(target_boxes, labels, valid, gh, gw, c)
    logp = jax.nn.log_sigmoid(heatmap_logits)
    log1mp = jax.nn.log_sigmoid(-heatmap_logits)
    p = jnp.exp(logp)
    pos = heat >= 1.0 - 1e-6
    focal = jnp.where(pos, (1 - p) ** alpha * logp, (1 - heat) ** beta * p ** alpha * log1mp)
    vf = valid.astype(jnp.float32)
    n = jnp.maximum(vf.sum(), 1.0)
    loss_heat = -jnp.sum(focal) / n
    boxes = decode_ltrb(ltrb).reshape(b, gh * gw, 4)
    pred = jnp.take_along_axis(boxes, cell[..., None], axis=1)  # [B, K, 4] xyxy
    tgt = cxcywh_to_xyxy(target_boxes)
    loss_l1 = jnp.sum(jnp.abs(xyxy_to_cxcywh(pred) - target_boxes).sum(-1) * vf) / n
    giou = jax.vmap(jax.vmap(lambda p_, t_: generalized_box_iou(p_[None], t_[None])[0, 0]))(pred, tgt)
    loss_giou = jnp.sum((1 - giou) * vf) / n
    total = loss_heat + l1_weight * loss_l1 + giou_weight * loss_giou
    return total, {"loss_heatmap": loss_heat, "loss_l1": loss_l1, "loss_giou": loss_giou}


def decode_ltrb(ltrb):
    """[B, gh, gw, 4] side distances -> [B, gh, gw, 4] xyxy boxes around each cell's centre."""
    gh, gw = ltrb.shape[1:3]
    c = cell_centers(gh, gw)
    return jnp.concatenate([c - ltrb[..., :2], c + ltrb[..., 2:]], axis=-1)


def center_detections(heatmap_logits, ltrb, k: int = 20):
    """CenterNet's inference: heatmap peaks (3x3 max-pool: a cell that is its
    neighbourhood's maximum, per class), the `k` best over cells and classes per image.
    -> (boxes [B, k, 4] xyxy, scores [B, k], labels [B, k])."""
    b, gh, gw, c = heatmap_logits.shape
    score = jax.nn.sigmoid(heatmap_logits)
    peak = jax.lax.reduce_window(score, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    score = jnp.where(score >= peak, score, 0.0).reshape(b, -1)
    top, index = jax.lax.top_k(score, k)
    boxes = decode_ltrb(ltrb).reshape(b, gh * gw, 4)
    return jnp.take_along_axis(boxes, (index // c)[..., None], axis=1), top, index % c
