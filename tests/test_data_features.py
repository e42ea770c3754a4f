"""Feature-dict batches: joint augmentation of images, masks, boxes and second images,
a tiny local tfds dataset with those features, and streaming augmentation that does not
depend on the process layout."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision import data
from jaxvision.data import augment as aug

H, W = 20, 24  # not square: catches height / width mix-ups
PALETTE = np.array([[40, 40, 40], [220, 60, 20], [30, 200, 90], [70, 90, 230]], np.uint8)  # background, objects
ROLES = {"image": "image", "target": "image", "mask": "mask", "boxes": "boxes"}


def _mask_boxes(mask, count):
    """Normalised [ymin, xmin, ymax, xmax] of the pixels of each object id 1..count, or None."""
    out = []
    for k in range(1, count + 1):
        rows, cols = np.nonzero(mask[..., 0] == k)
        out.append(None if rows.size == 0 else np.array(
            [rows.min() / mask.shape[0], cols.min() / mask.shape[1],
             (rows.max() + 1) / mask.shape[0], (cols.max() + 1) / mask.shape[1]]))
    return out


def _scene(rng, max_objects=3):
    """Image, segmentation mask (object j has id j + 1), boxes and a channel-reversed copy."""
    image = np.broadcast_to(PALETTE[0], (H, W, 3)).copy()
    mask = np.zeros((H, W, 1), np.uint8)
    boxes = []
    for j in range(rng.integers(1, max_objects + 1)):
        for _ in range(100):
            h, w = rng.integers(2, 8), rng.integers(2, 9)
            y, x = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            if not mask[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1].any():
                break
        image[y:y + h, x:x + w], mask[y:y + h, x:x + w] = PALETTE[j + 1], j + 1
        boxes.append([y / H, x / W, (y + h) / H, (x + w) / W])
    return image, mask, np.array(boxes, np.float32)


def _check_joint(image, target, mask, boxes, valid=None):
    """The mask covers exactly each object's pixels, the second image moved with the image,
    and each box is its object's mask bounding box (empty when the object left the frame)."""
    np.testing.assert_array_equal(target, image[..., ::-1])
    for k in range(1, len(PALETTE)):
        np.testing.assert_array_equal(mask[..., 0] == k, np.all(image == PALETTE[k], -1))
    for j, truth in enumerate(_mask_boxes(mask, len(boxes))):
        empty = boxes[j, 2] <= boxes[j, 0] or boxes[j, 3] <= boxes[j, 1]
        assert empty == (truth is None), (j, boxes[j])
        if truth is not None:
            np.testing.assert_allclose(boxes[j], truth, atol=1e-5)
        if valid is not None:
            assert valid[j] == (truth is not None)


def _example():
    image = np.broadcast_to(PALETTE[0], (H, W, 3)).copy()
    mask = np.zeros((H, W, 1), np.uint8)
    # Object 1 inside; object 2 on the left border, so some crops remove it entirely.
    for k, (y, x, h, w) in enumerate([(3, 15, 6, 7), (12, 0, 6, 3)], start=1):
        image[y:y + h, x:x + w], mask[y:y + h, x:x + w] = PALETTE[k], k
    boxes = np.array([[3 / H, 15 / W, 9 / H, 22 / W], [12 / H, 0, 18 / H, 3 / W]], np.float32)
    return {"image": image.astype(np.float32), "target": image[..., ::-1].astype(np.float32), "mask": mask,
            "boxes": boxes}


def _run(name, ex, seed, **kw):
    out = aug.augment_features(name, {k: tf.constant(v) for k, v in ex.items()}, ROLES,
                               tf.constant([5, seed], tf.int64), **kw)
    return {k: v.numpy() for k, v in out.items()}


def test_pad_crop_flip_moves_mask_boxes_and_second_image_with_the_image():
    ex = _example()
    padded = {k: np.pad(ex[k], [(4, 4), (4, 4), (0, 0)]) for k in ("image", "mask")}
    seen = set()
    for seed in range(40):
        out = _run("pad_crop_flip", ex, seed)
        # NumPy truth: the output is one of the 9 x 9 crops of the zero-padded image, maybe flipped,
        # and the mask is the same crop of the padded mask.
        matches = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
                   if np.array_equal(out["image"], (lambda c: c[:, ::-1] if f else c)(
                       padded["image"][oy:oy + H, ox:ox + W]))]
        assert len(matches) == 1
        oy, ox, f = matches[0]
        crop = padded["mask"][oy:oy + H, ox:ox + W]
        np.testing.assert_array_equal(out["mask"], crop[:, ::-1] if f else crop)
        _check_joint(out["image"], out["target"], out["mask"], out["boxes"])
        border = _run("pad_crop_flip", ex, seed, mask_pad_value=255)["mask"][..., 0] == 255
        np.testing.assert_array_equal(border, np.all(out["image"] == 0, -1))  # the image's zero padding
        empty = np.asarray(aug.box_is_empty(out["boxes"]))
        width = out["boxes"][1, 3] - out["boxes"][1, 1]
        seen.add((f, oy != 4 or ox != 4, bool(empty[1]), 0 < width < 3 / W - 1e-6))
    flips, moved, vanished, clipped = (set(s[i] for s in seen) for i in range(4))
    assert flips == {False, True} and True in moved and True in vanished and True in clipped


def test_flip_flips_boxes_and_masks_together():
    ex = _example()
    outcomes = set()
    for seed in range(12):
        out = _run("flip", ex, seed)
        flipped = not np.array_equal(out["image"], ex["image"])
        outcomes.add(flipped)
        np.testing.assert_array_equal(out["mask"], ex["mask"][:, ::-1] if flipped else ex["mask"])
        _check_joint(out["image"], out["target"], out["mask"], out["boxes"])
    assert outcomes == {False, True}


@pytest.mark.parametrize("name", ["inception_crop", "resize_crop"])
def test_resizing_crops_keep_masks_nearest_and_boxes_on_the_mask(name):
    ex = _example()
    size = 16
    for seed in range(10):
        out = _run(name, ex, seed, image_size=size)
        assert out["image"].shape == (size, size, 3) and out["mask"].shape == (size, size, 1)
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1, 2}  # nearest: no blends
        np.testing.assert_array_equal(out["target"], out["image"][..., ::-1])
        for j, truth in enumerate(_mask_boxes(out["mask"], 2)):
            if truth is not None:  # nearest sampling moves an edge by at most one output pixel
                np.testing.assert_allclose(out["boxes"][j], truth, atol=1.0 / size + 1e-5)


def test_image_transforms_are_tensorflows_stateless_ops():
    """The image of a joint transform is what tf.image's stateless ops give for the same seed
    (the draws every earlier run of jaxvision used), so training data did not change."""
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (H, W, 3)).astype(np.float32))
    for s in range(6):
        seed = tf.constant([3, s], tf.int64)
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        ref = tf.image.stateless_random_crop(tf.pad(image, [[4, 4], [4, 4], [0, 0]]), [H, W, 3], seed=crop_seed)
        ref = tf.image.stateless_random_flip_left_right(ref, seed=flip_seed)
        np.testing.assert_array_equal(aug.apply("pad_crop_flip", image, seed, None), ref)
        np.testing.assert_array_equal(aug.apply("flip", image, seed, None),
                                      tf.image.stateless_random_flip_left_right(image, seed=seed))
        big = tf.image.resize(image, [18, 22], method="bilinear")  # short side 16 * 1.143 -> 18
        ref = tf.image.stateless_random_crop(big, [16, 16, 3], seed=crop_seed)
        ref = tf.image.stateless_random_flip_left_right(ref, seed=flip_seed)
        np.testing.assert_array_equal(aug.apply("resize_crop", image, seed, 16), ref)


# A tiny local tfds dataset: no download, prepared in a temporary folder.
class JaxvisionTestScenes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(H, W, 3)),
            "target": tfds.features.Image(shape=(H, W, 3)),
            "segmentation_mask": tfds.features.Image(shape=(H, W, 1)),
            "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(),
                                               "label": tfds.features.ClassLabel(num_classes=3)}),
        }))

    def _split_generators(self, dl_manager):
        # "constant": one scene repeated, so any process layout reads the same global batches.
        return {"train": self._generate_examples(48, False), "constant": self._generate_examples(48, True)}

    def _generate_examples(self, count, constant):
        rng = np.random.default_rng(0)
        for i in range(count):
            image, mask, boxes = _scene(np.random.default_rng(1) if constant else rng)
            yield i, {"image": image, "target": image[..., ::-1].copy(), "segmentation_mask": mask,
                      "objects": {"bbox": boxes, "label": np.arange(len(boxes)) % 3}}


FEATURES = ("image", "target", "segmentation_mask", "objects")


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    data.ensure_prepared("jaxvision_test_scenes", path)
    return path


def _to_uint8(x):
    return np.round((x + 1.0) * 127.5).astype(np.uint8)  # value_range (-1, 1) back to stored values


def _check_batch(batch, max_objects=4):
    assert batch["objects/bbox"].shape[1:] == (max_objects, 4) and batch["objects/valid"].dtype == bool
    assert batch["segmentation_mask"].dtype == np.int32 and batch["objects/label"].dtype == np.int32
    for i in range(len(batch["image"])):
        _check_joint(_to_uint8(batch["image"][i]), _to_uint8(batch["target"][i]), batch["segmentation_mask"][i],
                     batch["objects/bbox"][i], batch["objects/valid"][i])


def test_dataset_info_reports_the_features_without_requiring_a_label(scenes_dir):
    info = data.dataset_info("jaxvision_test_scenes", scenes_dir)
    assert info.num_classes is None and info.image_shape == (H, W, 3)
    roles = {k: s.role for k, s in info.features.items()}
    assert roles == {"image": "image", "target": "image", "segmentation_mask": "mask",
                     "objects/bbox": "boxes", "objects/label": "label"}
    assert info.features["objects/bbox"].shape == (None, 4) and info.features["objects/label"].num_classes == 3
    assert info.require("image", "objects") is info
    with pytest.raises(ValueError, match=r"classification needs the feature\(s\) \['label'\].*objects/bbox"):
        info.require("image", "label", purpose="classification")
    with pytest.raises(ValueError, match="no feature 'label'.*objects/bbox"):
        data.train_iterator("jaxvision_test_scenes", global_batch_size=8, seed=0, data_dir=scenes_dir)


@pytest.mark.parametrize("in_memory", [True, False])
def test_pipeline_yields_jointly_augmented_features(scenes_dir, in_memory):
    it = data.train_iterator("jaxvision_test_scenes", global_batch_size=16, seed=0, data_dir=scenes_dir,
                             augment="pad_crop_flip", features=FEATURES, max_objects=4, in_memory=in_memory)
    plain = data.train_iterator("jaxvision_test_scenes", global_batch_size=16, seed=0, data_dir=scenes_dir,
                                augment="none", features=FEATURES, max_objects=4, in_memory=in_memory)
    for _ in range(3):
        batch, before = next(it), next(plain)
        assert set(batch) == {"image", "target", "segmentation_mask", "objects/bbox", "objects/label",
                              "objects/valid"}
        _check_batch(batch)
        _check_batch(before)
        assert not np.array_equal(batch["image"], before["image"])  # augmented...
        np.testing.assert_array_equal(batch["objects/label"], before["objects/label"])  # ...same examples


def test_eval_batches_resize_masks_nearest_and_keep_boxes(scenes_dir):
    batches = list(data.eval_batches("jaxvision_test_scenes", "train", global_batch_size=20, data_dir=scenes_dir,
                                     features=("image", "segmentation_mask", "objects/bbox"), max_objects=4,
                                     image_size=40))
    assert len(batches) == 3 and sum(int(b["mask"].sum()) for b in batches) == 48
    stored = list(tfds.as_numpy(tfds.load("jaxvision_test_scenes", split="train", data_dir=scenes_dir)))
    first = batches[0]
    assert first["image"].shape == (20, 40, 40, 3) and first["segmentation_mask"].shape == (20, 40, 40, 1)
    for i, ex in enumerate(stored[:20]):
        count = len(ex["objects"]["bbox"])
        np.testing.assert_array_equal(first["objects/valid"][i], np.arange(4) < count)
        np.testing.assert_array_equal(first["objects/bbox"][i, :count], ex["objects"]["bbox"])
        # Nearest resizing (half-pixel centres): each output pixel is the stored pixel under its centre.
        rows, cols = ((np.arange(40) + 0.5) * H / 40).astype(int), ((np.arange(40) + 0.5) * W / 40).astype(int)
        np.testing.assert_array_equal(first["segmentation_mask"][i], ex["segmentation_mask"][rows][:, cols])


@pytest.mark.parametrize("in_memory", [False, True])
def test_augmentation_depends_on_the_global_position_not_the_process_layout(scenes_dir, in_memory):
    """Defect 6: streamed examples were seeded by positions that overlap across processes.
    On a split of identical examples every layout reads the same global batches, so the
    augmented global batch must be the same for 1 and 2 processes."""
    kw = dict(global_batch_size=8, seed=4, data_dir=scenes_dir, augment="pad_crop_flip", max_objects=4,
              features=("image", "segmentation_mask", "objects"), in_memory=in_memory)  # a subset: partial decoding

    def global_batches(count, start_step=0):
        its = [data.train_iterator("jaxvision_test_scenes", "constant", start_step=start_step, process_index=i,
                                   process_count=count, **kw) for i in range(count)]
        assert len({it.steps_per_epoch for it in its}) == 1
        return [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
                for parts in zip(*[[next(it) for _ in range(8)] for it in its])]

    one, two = global_batches(1), global_batches(2)  # 6 steps per epoch: crosses an epoch
    for a, b in zip(one, two):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    resumed = global_batches(2, start_step=5)
    for a, b in zip(one[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert len({_to_uint8(x).tobytes() for b in one for x in b["image"]}) > 20  # positions differ, so do images


def test_tasks_refuse_a_dataset_without_the_features_they_need(scenes_dir, tmp_path):
    from jaxvision.tasks import classification

    cfg = classification.ClassificationConfig(data=classification.DataConfig(
        dataset="jaxvision_test_scenes", data_dir=scenes_dir))
    with pytest.raises(ValueError, match=r"Classification needs the feature\(s\) \['label'\]"):
        classification.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
