"""Unpaired domains: each domain holds its own images only, the two are shuffled
independently (never a fixed pairing), resume gives the same batches, bad folders are
refused. On tiny local image folders and the offline Fashion-MNIST; nothing is downloaded."""

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import unpaired


def image_folder(path, ids, mode="L", size=8):
    """One image per id, every pixel = id (so a batch tells which images it holds)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(np.full(shape, i, np.uint8), mode).save(path / f"{i:03d}.png")
    return path


def ids_of(batch):
    return [int(round((x.mean() + 1) * 127.5)) for x in batch]


@pytest.fixture
def folders(tmp_path):
    return image_folder(tmp_path / "a", range(10, 16)), image_folder(tmp_path / "b", range(100, 106))


def test_domains_are_shuffled_independently_and_never_paired(folders):
    a, b = (f"folder:{p}" for p in folders)
    it = unpaired.unpaired_batches(a, b, global_batch_size=2, seed=0, image_size=8, process_index=0, process_count=1)
    steps = [next(it) for _ in range(9)]  # 3 epochs of 3 steps
    seq_a = [i for s in steps for i in ids_of(s["a"])]
    seq_b = [i for s in steps for i in ids_of(s["b"])]
    for e in range(3):  # every epoch shows each image of its own domain once
        assert sorted(seq_a[6 * e:6 * e + 6]) == list(range(10, 16))
        assert sorted(seq_b[6 * e:6 * e + 6]) == list(range(100, 106))
    # B's order is its own stream's (seed 2s+1), whatever A is; A's and B's orders differ,
    # so the partner of an A image is not fixed: it changes across epochs.
    alone = unpaired.domain_stream(b, global_batch_size=2, seed=1, image_size=8, process_index=0, process_count=1)
    assert [i for _ in range(9) for i in ids_of(next(alone))] == seq_b
    assert [i - 10 for i in seq_a] != [i - 100 for i in seq_b]
    partners = {}
    for x, y in zip(seq_a, seq_b):
        partners.setdefault(x, set()).add(y)
    assert any(len(p) > 1 for p in partners.values())
    # Resume: the stream from step 4 is the tail of the stream from 0.
    resumed = unpaired.unpaired_batches(a, b, global_batch_size=2, seed=0, start_step=4, image_size=8,
                                        process_index=0, process_count=1)
    for s in steps[4:]:
        r = next(resumed)
        assert np.array_equal(r["a"], s["a"]) and np.array_equal(r["b"], s["b"])


def test_bad_folders_get_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        next(unpaired.domain_stream(f"folder:{tmp_path / 'empty'}", global_batch_size=1, seed=0, image_size=8))
    mixed = image_folder(tmp_path / "mixed", [1, 2])
    image_folder(mixed, [3], mode="RGB")
    with pytest.raises(ValueError, match="mixes grayscale .* and RGB"):
        next(unpaired.domain_images(f"folder:{mixed}", image_size=8))
    rgb = np.concatenate(list(unpaired.domain_images(f"folder:{mixed}", image_size=8, channels=3)))
    assert rgb.shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
        unpaired.parse_domain("tfds:cycle_gan/horse2zebra")
    with pytest.raises(ValueError, match="Unknown domain"):
        unpaired.parse_domain(str(tmp_path / "missing"))


def test_tfds_domains_parse_to_the_online_datasets():
    d = unpaired.parse_domain("tfds:cycle_gan/horse2zebra:trainA")
    assert (d.kind, d.name, d.split, d.label) == ("tfds", "cycle_gan/horse2zebra", "trainA", None)
    a, b = unpaired.fashion_mnist_domains("tshirt2shirt", "test")
    assert (str(a), str(b)) == ("tfds:fashion_mnist:test:t-shirt/top", "tfds:fashion_mnist:test:shirt")


def test_fashion_mnist_class_domains_hold_their_class_only(tfds_data_dir):
    import tensorflow_datasets as tfds

    a, b = unpaired.fashion_mnist_domains("sneaker2boot", "test")
    assert (unpaired.class_id(a, tfds_data_dir), unpaired.class_id(b, tfds_data_dir)) == (7, 9)
    data = tfds.as_numpy(tfds.load("fashion_mnist", split="test", data_dir=tfds_data_dir, batch_size=-1,
                                   download=False))
    sets = {c: {x.tobytes() for x in data["image"][data["label"] == c]} for c in (7, 9)}
    it = unpaired.unpaired_batches(a, b, global_batch_size=16, seed=0, data_dir=tfds_data_dir,
                                   process_index=0, process_count=1)
    for _ in range(2):
        batch = next(it)
        for key, c in (("a", 7), ("b", 9)):
            pixels = np.round((batch[key] + 1) * 127.5).astype(np.uint8)
            assert all(x.tobytes() in sets[c] for x in pixels)
