import numpy as np
import pytest

from jaxvision import data
from jaxvision.data import prepare


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_fashion_mnist_is_the_standard_tfds_dataset(tfds_data_dir):
    info = data.dataset_info("fashion_mnist", tfds_data_dir)
    assert info.num_classes == 10
    assert info.image_shape == (28, 28, 1)
    assert info.split_sizes == {"train": 60000, "test": 10000}
    builder = data.ensure_prepared("fashion_mnist", tfds_data_dir)
    assert str(builder.version) == "3.0.1"


def test_batches_have_model_ready_values(tfds_data_dir):
    batch = next(data.train_iterator("fashion_mnist", global_batch_size=32, seed=0, data_dir=tfds_data_dir))
    assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and set(np.unique(batch["label"])) <= set(range(10))


@pytest.mark.parametrize("augment", ["none", "pad_crop_flip"])
def test_same_seed_same_batches_different_seed_different(tfds_data_dir, augment):
    kw = dict(global_batch_size=64, data_dir=tfds_data_dir, augment=augment)
    a = _take(data.train_iterator("fashion_mnist", seed=1, **kw), 3)
    b = _take(data.train_iterator("fashion_mnist", seed=1, **kw), 3)
    c = _take(data.train_iterator("fashion_mnist", seed=2, **kw), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_resume_at_step_gives_the_same_batches(tfds_data_dir):
    kw = dict(global_batch_size=100, data_dir=tfds_data_dir, augment="pad_crop_flip", seed=3)
    it = data.train_iterator("fashion_mnist", "train[:300]", **kw)  # 3 steps per epoch: crosses an epoch
    full = _take(it, 5)
    resumed = _take(data.train_iterator("fashion_mnist", "train[:300]", start_step=2, **kw), 3)
    for x, y in zip(full[2:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
    # A new epoch is a new permutation.
    assert not np.array_equal(full[0]["label"], full[3]["label"])


def test_processes_read_disjoint_slices_of_the_global_batch(tfds_data_dir):
    kw = dict(global_batch_size=64, data_dir=tfds_data_dir, seed=0, augment="pad_crop_flip")
    whole = _take(data.train_iterator("fashion_mnist", process_index=0, process_count=1, **kw), 2)
    parts = [_take(data.train_iterator("fashion_mnist", process_index=i, process_count=2, **kw), 2)
             for i in range(2)]
    for step in range(2):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        # Each process's slice is exactly its half of the single-process global batch,
        # augmentation included: the global batch does not depend on the process count.
        np.testing.assert_array_equal(joined, whole[step]["image"])


def test_augmentation_changes_images_but_not_labels(tfds_data_dir):
    kw = dict(global_batch_size=64, data_dir=tfds_data_dir, seed=0)
    plain = next(data.train_iterator("fashion_mnist", augment="none", **kw))
    aug = next(data.train_iterator("fashion_mnist", augment="pad_crop_flip", **kw))
    np.testing.assert_array_equal(plain["label"], aug["label"])
    assert not np.array_equal(plain["image"], aug["image"])


def test_eval_covers_every_example_once(tfds_data_dir):
    batches = list(data.eval_batches("fashion_mnist", "test", global_batch_size=3000, data_dir=tfds_data_dir))
    assert len(batches) == 4 and sum(int(b["mask"].sum()) for b in batches) == 10000
    assert not batches[-1]["mask"][1000:].any()
    halves = [list(data.eval_batches("fashion_mnist", "test[:100]", global_batch_size=64, data_dir=tfds_data_dir,
                                     process_index=i, process_count=2)) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == 2  # same number of steps on every process
    assert sum(int(b["mask"].sum()) for h in halves for b in h) == 100


def test_features_choose_what_a_batch_carries(tfds_data_dir):
    kw = dict(global_batch_size=8, data_dir=tfds_data_dir)
    both = next(iter(data.eval_batches("fashion_mnist", "test[:8]", **kw)))
    images = next(iter(data.eval_batches("fashion_mnist", "test[:8]", features=("image",), **kw)))
    assert sorted(both) == ["image", "label", "mask"] and sorted(images) == ["image", "mask"]
    np.testing.assert_array_equal(images["image"], both["image"])
    info = data.dataset_info("fashion_mnist", tfds_data_dir)
    assert {k: s.role for k, s in info.features.items()} == {"image": "image", "label": "label"}
    with pytest.raises(ValueError, match="no feature 'segmentation_mask'.*'image', 'label'"):
        data.train_iterator("fashion_mnist", features=("image", "segmentation_mask"), seed=0, **kw)


def test_bad_inputs_give_clear_errors(tfds_data_dir):
    with pytest.raises(ValueError, match="Unknown tfds dataset"):
        data.dataset_info("no_such_dataset_xyz", tfds_data_dir)
    with pytest.raises(ValueError, match="Unknown split 'validation'.*available splits"):
        data.train_iterator("fashion_mnist", "validation", global_batch_size=8, seed=0, data_dir=tfds_data_dir)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        data.train_iterator("fashion_mnist", global_batch_size=9, seed=0, data_dir=tfds_data_dir,
                            process_index=0, process_count=2)
    with pytest.raises(ValueError, match="Unknown augmentation"):
        data.train_iterator("fashion_mnist", global_batch_size=8, seed=0, data_dir=tfds_data_dir, augment="mixup")


def test_offline_without_local_files_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "FASHION_MNIST_LOCAL_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as err:
        prepare.ensure_prepared("fashion_mnist", str(tmp_path / "tfds"), download=False)
    message = str(err.value)
    assert "network" in message and "dataset-fashion-mnist" in message

    def no_network(self, *a, **k):
        raise ConnectionError("name resolution failed")

    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(RuntimeError, match="(?s)name resolution failed.*network.*dataset-fashion-mnist"):
        prepare.ensure_prepared("fashion_mnist", str(tmp_path / "tfds"))


def test_local_files_prepare_the_standard_dataset(tmp_path):
    """The offline path writes tfds's own fashion_mnist (same name, version, records)."""
    if not prepare.local_fashion_mnist_available():
        pytest.skip("dataset-fashion-mnist is not installed")
    prepare.prepare_local_fashion_mnist(str(tmp_path))
    import tensorflow_datasets as tfds

    ds = tfds.load("fashion_mnist", split="test[:5]", data_dir=str(tmp_path), download=False)
    labels = [int(ex["label"]) for ex in tfds.as_numpy(ds)]
    assert len(labels) == 5 and all(0 <= label < 10 for label in labels)
