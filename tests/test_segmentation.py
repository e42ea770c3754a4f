"""Segmentation: confusion-matrix mIoU against NumPy, the mask-transformer decoder against a
NumPy forward pass, the Segmenter's composition, the task's step / eval / finalize, the
transfer of a classifier's encoder, plots, and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.metrics import segmentation as segm
from jaxvision.models.segmenter import MaskTransformerDecoder, Segmenter
from jaxvision.models.vit import ViT

K = 4


def _np_confusion(labels, preds, k, weights=None):
    cm = np.zeros((k, k), np.int64)
    for b in range(labels.shape[0]):
        if weights is not None and not weights[b]:
            continue
        for t, p in zip(labels[b].ravel(), preds[b].ravel()):
            if t != 255:
                cm[t, p] += 1
    return cm


def test_confusion_and_miou_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, size=(6, 5, 7))
    labels[labels == 3] = rng.choice([3, 255], size=(labels == 3).sum())
    labels[:, :, 0] = np.where(labels[:, :, 0] == 2, 0, labels[:, :, 0])
    preds = rng.integers(0, K, size=(6, 5, 7))
    weights = np.array([1, 1, 0, 1, 1, 1], bool)  # example 2 is eval padding
    total = sum(np.asarray(segm.confusion_matrix(labels[i:i + 2], preds[i:i + 2], K, weights=weights[i:i + 2]))
                for i in range(0, 6, 2))
    truth = _np_confusion(labels, preds, K, weights)
    np.testing.assert_array_equal(total, truth)
    m = segm.segmentation_metrics(total, ["bg", "a", "b", "c"])
    ious = [truth[c, c] / (truth[c].sum() + truth[:, c].sum() - truth[c, c]) for c in range(K)]
    assert m["miou"] == pytest.approx(np.mean(ious))
    assert m["pixel_accuracy"] == pytest.approx(np.trace(truth) / truth.sum())
    assert m["iou/c"] == pytest.approx(ious[3])
    # A class absent from labels and predictions has no IoU and is left out of the mean.
    cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    assert segm.segmentation_metrics(cm)["miou"] == pytest.approx((5 / 8 + 4 / 7) / 2)


def test_bad_labels_are_clear_errors():
    with pytest.raises(ValueError, match="beyond the head"):
        segm.check_labels(np.array([[0, 4]]), 4)
    segm.check_labels(np.array([[0, 3, 255]]), 4)  # ignore is allowed
    with pytest.raises(ValueError, match="height and width"):
        segm.check_labels(np.zeros((2, 8, 8)), 4, image_shape=(8, 9))
    with pytest.raises(ValueError, match="empty"):
        segm.segmentation_metrics(np.zeros((3, 3)))


def _ln(x, scale, bias, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_mask_transformer_decoder_matches_numpy_without_blocks():
    # depth 0 leaves the part Segmenter adds to a transformer: projections, class
    # embeddings, L2-normalised patch-class products and the mask LayerNorm.
    dec = MaskTransformerDecoder(num_classes=3, width=8, depth=0, num_heads=2)
    tokens = np.random.default_rng(1).normal(size=(2, 6, 5)).astype(np.float32)
    params = jax.jit(dec.init)(jax.random.PRNGKey(2), tokens)["params"]
    noise = np.random.default_rng(3)  # move LayerNorm scales / biases off 1 / 0
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * noise.normal(size=p.shape).astype(np.float32), params)
    out = np.asarray(jax.jit(dec.apply)({"params": params}, tokens))
    p = jax.tree_util.tree_map(np.asarray, params)
    x = np.asarray(tokens) @ p["proj_dec"]["kernel"] + p["proj_dec"]["bias"]
    x = np.concatenate([x, np.broadcast_to(p["cls_emb"], (2, 3, 8))], 1)
    x = _ln(x, p["decoder_norm"]["scale"], p["decoder_norm"]["bias"])
    patches, classes = x[:, :6] @ p["proj_patch"]["kernel"], x[:, 6:] @ p["proj_classes"]["kernel"]
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    masks = np.einsum("bnd,bkd->bnk", patches, classes)
    np.testing.assert_allclose(out, _ln(masks, p["mask_norm"]["scale"], p["mask_norm"]["bias"]), atol=2e-5)


def _encoder(**kw):
    return ViT(num_classes=0, variant=None, width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4, **kw)


def test_segmenter_is_decoder_on_encoded_tokens_upsampled_bilinearly():
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 1)).astype(np.float32)
    for decoder in ("linear", "mask_transformer"):
        model = Segmenter(num_classes=K, encoder=_encoder(pool="cls"), decoder=decoder)
        variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
        logits = jax.jit(model.apply)(variables, images)
        assert logits.shape == (2, 8, 12, K) and logits.dtype == jnp.float32
        _, inter = jax.jit(_encoder(pool="cls").apply)({"params": variables["params"]["encoder"]}, images)
        tokens = inter["encoded"][:, 1:]  # the CLS token is not a patch
        if decoder == "linear":
            head = variables["params"]["decoder"]["head"]
            scores = tokens @ head["kernel"] + head["bias"]
        else:
            scores = jax.jit(MaskTransformerDecoder(K, width=16, num_heads=2, mlp_dim=32).apply)(
                {"params": variables["params"]["decoder"]}, tokens)
        grid = np.asarray(scores).reshape(2, 2, 3, K)
        # Bilinear with half-pixel centres: pixel i samples the patch grid at (i + 0.5) / 4 - 0.5.
        np.testing.assert_allclose(np.asarray(logits), _upsample(_upsample(grid, 1, 4), 2, 4), atol=1e-5)


def _upsample(x, axis, factor):
    """Linear interpolation along `axis` at the half-pixel-centred positions, edges clamped."""
    n = x.shape[axis]
    pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi, w = np.minimum(lo + 1, n - 1), pos - lo
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.take(x, lo, axis) * (1 - w).reshape(shape) + np.take(x, hi, axis) * w.reshape(shape)


def test_segmenter_bad_configurations():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="patch_dropout"):
        Segmenter(K, _encoder(patch_dropout=0.5)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="num_classes=0"):
        Segmenter(K, ViT(num_classes=3, variant=None, width=16, depth=1, mlp_dim=32, num_heads=2,
                         patch_size=4)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="decoder must be"):
        Segmenter(K, _encoder(), decoder="fcn").init(jax.random.PRNGKey(0), x)


def test_pixel_cross_entropy_ignores_label_255():
    from jaxvision.tasks.segmentation import pixel_cross_entropy

    logits = np.random.default_rng(0).normal(size=(2, 3, 3, K)).astype(np.float32)
    labels = np.array([[[0, 1, 255], [2, 3, 0], [1, 1, 1]], [[255] * 3, [0, 0, 0], [3, 2, 1]]])
    total, count = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != 255
    truth = -sum(logp[b, i, j, labels[b, i, j]] for b, i, j in zip(*np.nonzero(keep)))
    assert int(count) == keep.sum() and float(total) == pytest.approx(truth, rel=1e-5)


def test_task_steps_eval_over_batches_and_transfer_from_a_classifier(tmp_path):
    from jaxvision.tasks import segmentation as seg
    from jaxvision.train import optim
    from jaxvision.train.plots_dense import colorize, plot_segmentation

    model = Segmenter(num_classes=K, encoder=_encoder(pool="gap"), decoder="linear")
    # The transfer path: a classifier's weights go into the encoder, position embeddings
    # resampled from its 2x2 grid to this 4x4 grid, its head dropped.
    classifier = ViT(num_classes=3, variant=None, width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4, pool="gap",
                     head_zero_init=False)
    source = jax.jit(classifier.init)(jax.random.PRNGKey(5), jnp.zeros((1, 8, 8, 1)))["params"]
    init_params, report = seg.pretrained_encoder_init(source, (16, 16, 1), model, log=lambda m: None)
    assert report["dropped"] == ["head"] and len(report["resampled"]) == 1
    tx = optim.make_optimizer("adamw", 1e-2)
    task = seg.make_task(model, tx, image_shape=(16, 16, 1), num_classes=K, init_params=init_params,
                         class_names=["bg", "a", "b", "c"])
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    enc = state.params["encoder"]
    np.testing.assert_array_equal(enc["embedding"]["kernel"], source["embedding"]["kernel"])
    np.testing.assert_array_equal(enc["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"],
                                  source["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"])
    posemb = enc["Transformer"]["posembed_input"]["pos_embedding"]
    assert posemb.shape == (1, 16, 16)
    np.testing.assert_allclose(posemb[0, 0], source["Transformer"]["posembed_input"]["pos_embedding"][0, 0],
                               atol=1e-6)  # align-corners resampling keeps the corner

    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 16, 1)).astype(np.float32)
    labels = (images[..., 0] > 0.5).astype(np.int32) * rng.integers(1, K, size=(4, 1, 1)).astype(np.int32)
    batch = {"image": images, "segmentation": labels}
    step = jax.jit(task.train_step)
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    evaluate = jax.jit(task.eval_step)
    halves = [evaluate(state, {"image": images[i:i + 2], "segmentation": labels[i:i + 2],
                               "mask": np.array([True, i == 0])}) for i in (0, 2)]
    totals = jax.tree_util.tree_map(lambda a, b: a + b, *halves)  # as the loop sums them
    preds = np.argmax(np.asarray(jax.jit(lambda p, x: seg._apply(model, p, x, False))(state.params, images)), -1)
    np.testing.assert_array_equal(totals["confusion"], _np_confusion(labels, preds, K, [1, 1, 1, 0]))
    assert task.finalize(totals)["miou"] == pytest.approx(segm.segmentation_metrics(totals["confusion"])["miou"])

    path = plot_segmentation(images[:2], labels[:2], preds[:2], tmp_path / "plots" / "p.png", num_classes=K)
    assert path.stat().st_size > 0
    colors = colorize(np.array([[0, 2, 255, 9]]), K)
    np.testing.assert_array_equal(colors[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colors[0, 2], [1, 1, 1])
    assert not np.array_equal(colors[0, 1], colors[0, 0])
    assert dataclasses.is_dataclass(seg.SegmentationConfig())
