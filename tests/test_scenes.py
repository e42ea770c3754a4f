"""fashion_scenes (synthetic scenes from Fashion-MNIST items): composition against a
brute-force repaint, bilinear scaling against TensorFlow, a tiny tfds build read through the
dense pipeline, the dense mapping of pet / voc / coco features, and bad input."""

import numpy as np
import pytest
import tensorflow as tf

from jaxvision.data import scenes


def _items(rng, n, size=28):
    """Random items: a bright blob with a dark border and some faint pixels."""
    items = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        h, w = rng.integers(8, 24, size=2)
        y, x = rng.integers(1, size - h), rng.integers(1, size - w)
        items[i, y:y + h, x:x + w] = rng.integers(40, 256, size=(h, w))
        items[i, y:y + h, x] = 10  # below the threshold: never part of the silhouette
    return items


def test_scale_item_is_tensorflow_bilinear():
    item = _items(np.random.default_rng(0), 1)[0]
    for size in (9, 19, 28, 41):
        ref = tf.image.resize(item[..., None].astype(np.float32), [size, size], "bilinear", antialias=False)
        ref = np.clip(np.rint(ref.numpy()[..., 0]), 0, 255)
        assert np.abs(scenes.scale_item(item, size).astype(int) - ref).max() <= 1  # rounding of x.5 only


def test_compose_scene_matches_a_brute_force_repaint(monkeypatch):
    rng = np.random.default_rng(1)
    seen_dropped, seen_occluded = False, False
    for trial in range(60):
        # One placement try in half the trials, so fully occluded items occur.
        monkeypatch.setattr(scenes, "PLACEMENT_TRIES", 1 if trial % 2 else 20)
        n = int(rng.integers(1, 6))
        items, labels = _items(rng, n), rng.integers(0, 10, size=n)
        s = scenes.compose_scene(items, labels, np.random.default_rng(trial), canvas=24)
        # Repaint from the placements, later items on top, silhouette by the documented threshold.
        image, owner = np.zeros((24, 24), np.uint8), np.full((24, 24), -1)
        for j, (y, x, side) in enumerate(s["placements"]):
            scaled = scenes.scale_item(items[j], side)
            sil = scaled >= scenes.SILHOUETTE_THRESHOLD
            image[y:y + side, x:x + side][sil] = scaled[sil]
            owner[y:y + side, x:x + side][sil] = j
        np.testing.assert_array_equal(s["image"], image)
        kept = [j for j in range(n) if (owner == j).any()]
        seen_dropped |= len(kept) < n
        np.testing.assert_array_equal(s["kept"], kept)
        np.testing.assert_array_equal(s["labels"], labels[kept])
        seg = np.zeros((24, 24), int)
        for i, j in enumerate(kept):
            visible = owner == j
            np.testing.assert_array_equal(s["instance_mask"] == i + 1, visible)
            seg[visible] = labels[j] + 1
            rows, cols = np.nonzero(visible)
            np.testing.assert_allclose(s["boxes"][i], [rows.min() / 24, cols.min() / 24, (rows.max() + 1) / 24,
                                                       (cols.max() + 1) / 24])
            assert s["areas"][i] == visible.sum()
            seen_occluded |= visible.sum() < (scenes.scale_item(items[j], s["placements"][j][2])
                                              >= scenes.SILHOUETTE_THRESHOLD).sum()
        np.testing.assert_array_equal(s["segmentation"], seg)
        assert (s["instance_mask"] == 0).sum() == (s["image"] == 0).sum()
    assert seen_occluded and seen_dropped  # both cases were exercised


def test_empty_scene_is_an_error():
    with pytest.raises(ValueError, match="at least one item"):
        scenes.compose_scene(np.zeros((0, 28, 28), np.uint8), [], np.random.default_rng(0), 32)


def test_draw_scene_is_deterministic_and_independent_of_order():
    rng = np.random.default_rng(2)
    pool, labels = _items(rng, 30), rng.integers(0, 10, size=30)
    a = scenes.draw_scene(pool, labels, 32, 0, 7)
    scenes.draw_scene(pool, labels, 32, 0, 3)
    b = scenes.draw_scene(pool, labels, 32, 0, 7)
    c = scenes.draw_scene(pool, labels, 32, 1, 7)
    for k in ("image", "segmentation", "instance_mask", "boxes", "labels"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"])  # the split is part of the seed


def test_the_large_config_extends_canvas64():
    # Scene i is drawn from (canvas, split, i) alone, so a config with the same canvas and
    # more train scenes holds canvas64's train scenes as its first 10,000 and its test set.
    configs = {c.name: c for c in scenes.FashionScenes.BUILDER_CONFIGS}
    small, large = configs["canvas64"], configs["canvas64_large"]
    assert (large.canvas, large.test_scenes) == (small.canvas, small.test_scenes)
    assert large.train_scenes == 6 * small.train_scenes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tfds_data_dir):
    """The 'tiny' config (32x32, 32 train / 8 test scenes) built in a tmp dir."""
    from jaxvision.data import ensure_prepared

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return ensure_prepared("fashion_scenes/tiny", data_dir), data_dir


def test_tiny_build_through_the_dense_pipeline(tiny, tfds_data_dir):
    import tensorflow_datasets as tfds

    from jaxvision import data

    builder, data_dir = tiny
    assert builder.info.splits["train"].num_examples == 32 and builder.info.splits["test"].num_examples == 8
    # Test scenes are made of Fashion-MNIST test items: scene 0 redrawn from the test pool.
    fm = tfds.as_numpy(tfds.builder("fashion_mnist", data_dir=tfds_data_dir).as_dataset(split="test", batch_size=-1))
    truth = scenes.draw_scene(fm["image"][..., 0], fm["label"], 32, 1, 0)
    batches = list(data.dense_batches("fashion_scenes/tiny", "test", train=False, global_batch_size=8,
                                      data_dir=data_dir, value_range=(0.0, 255.0)))
    assert len(batches) == 1
    b = batches[0]
    assert b["image"].shape == (8, 32, 32, 1) and b["segmentation"].shape == (8, 32, 32)
    assert b["boxes"].shape == (8, 5, 4) and b["labels"].shape == (8, 5) and b["valid"].dtype == bool
    stored = next(iter(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False))))
    np.testing.assert_array_equal(stored["image"][..., 0], truth["image"])
    np.testing.assert_array_equal(b["segmentation"][0], truth["segmentation"])
    m = len(truth["labels"])
    np.testing.assert_array_equal(b["valid"][0], np.arange(5) < m)
    np.testing.assert_allclose(b["boxes"][0, :m], truth["boxes"])
    np.testing.assert_array_equal(b["labels"][0, :m], truth["labels"])
    train = data.dense_batches("fashion_scenes/tiny", "train", train=True, global_batch_size=4, seed=0,
                               data_dir=data_dir, augment="flip")
    t = next(train)
    assert t["segmentation"].dtype == np.int32 and t["segmentation"].max() <= 10


def _batch(**kw):
    b = {"image": np.zeros((2, 8, 8, 3), np.float32)}
    b.update(kw)
    return b


def test_dense_mapping_of_pet_voc_coco_features():
    pet = scenes.to_dense(_batch(segmentation_mask=np.array([1, 2, 3, 2] * 32).reshape(2, 8, 8, 1)),
                          scenes.dense_source("oxford_iiit_pet:4.0.0"))
    np.testing.assert_array_equal(pet["segmentation"][0, 0, :4], [1, 0, scenes.IGNORE, 0])
    objects = {"objects/bbox": np.ones((2, 3, 4), np.float32), "objects/label": np.array([[3, 4, 5], [6, 7, 8]]),
               "objects/valid": np.array([[True, True, False], [True, False, False]])}
    voc = scenes.to_dense(_batch(**objects), scenes.dense_source("voc/2007"))
    np.testing.assert_array_equal(voc["labels"], [[3, 4, 0], [6, 0, 0]])
    coco = scenes.to_dense(_batch(**objects, **{"objects/is_crowd": np.array([[False, True, False]] * 2)}),
                           scenes.dense_source("coco/2017"))
    np.testing.assert_array_equal(coco["valid"], [[True, False, False], [True, False, False]])
    assert "segmentation" not in voc


def test_bad_dense_input_is_a_clear_error():
    with pytest.raises(ValueError, match="height and width"):
        scenes.to_dense(_batch(segmentation=np.zeros((2, 8, 9), np.uint8)), scenes.dense_source("fashion_scenes"))
    with pytest.raises(ValueError, match="no dense mapping"):
        scenes.dense_source("mnist")


def _fake_builder(name, config, data_dir, examples):
    """tfds's own builder of `name` (its real features), prepared in `data_dir` from
    hand-written examples instead of a download."""
    base = tfds_builder_cls(name)

    class Fake(base, skip_registration=True):
        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from enumerate(examples)

    Fake.name = name
    builder = Fake(config=config, data_dir=data_dir) if config else Fake(data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def tfds_builder_cls(name):
    import tensorflow_datasets as tfds

    return tfds.builder_cls(name)


def test_oxford_pet_and_coco_read_through_the_same_code(tmp_path):
    from jaxvision import data

    data_dir = str(tmp_path)
    sizes = [(16, 16), (20, 24), (16, 16)]
    pets = []
    for k, (h, w) in enumerate(sizes):
        mask = np.full((h, w, 1), 2, np.uint8)  # background
        mask[4:12, 6 + k:14] = 1  # the pet
        mask[4:12, 5 + k] = 3  # its border
        pets.append({"file_name": f"{k}.jpg", "head_bbox": np.array([0.1, 0.1, 0.5, 0.5], np.float32),
                     "image": np.full((h, w, 3), 10 * (k + 1), np.uint8), "label": k, "segmentation_mask": mask,
                     "species": 0})
    _fake_builder("oxford_iiit_pet", None, data_dir, pets)
    (b,) = data.dense_batches("oxford_iiit_pet", "train", train=False, global_batch_size=3, data_dir=data_dir,
                              image_size=16, value_range=(0.0, 255.0))
    assert b["image"].shape == (3, 16, 16, 3) and b["segmentation"].shape == (3, 16, 16)
    # Varying sizes: resized (short side 18) and centre-cropped to 16 with the image; the
    # trimap values 1 / 2 / 3 arrive as pet 1, background 0, border IGNORE (exact mapping:
    # test_dense_mapping_of_pet_voc_coco_features).
    assert sorted(int(round(v)) for v in b["image"][:, 0, 0, 0]) == [10, 20, 30]
    for i in range(3):
        assert set(np.unique(b["segmentation"][i])) == {0, 1, scenes.IGNORE}

    coco = [{"image": np.zeros((16, 16, 3), np.uint8), "image/filename": f"{k}.jpg", "image/id": k,
             "objects": {"area": np.array([4, 9]), "bbox": np.array([[0, 0, 0.5, 0.25], [0.5, 0.5, 1, 1]], np.float32),
                         "id": np.array([1, 2]), "is_crowd": np.array([False, k == 1]),
                         "label": np.array([3, 79])}} for k in range(2)]
    _fake_builder("coco", "2017", data_dir, coco)
    (c,) = data.dense_batches("coco/2017", "train", train=False, global_batch_size=2, data_dir=data_dir,
                              max_objects=3)
    np.testing.assert_allclose(c["boxes"][:, :2], np.broadcast_to(coco[0]["objects"]["bbox"], (2, 2, 4)))
    valid = sorted(map(tuple, c["valid"].tolist()))
    assert valid == [(True, False, False), (True, True, False)]  # the crowd object is not a target
    assert sorted(map(tuple, c["labels"].tolist())) == [(3, 0, 0), (3, 79, 0)]
