"""tfds input pipelines for image classification (and GAN training data).

Two guarantees shape this module:

* Determinism: the batch at global step `s` is a pure function of (dataset, split,
  seed, global batch size, s). Shuffling is a NumPy permutation seeded by
  (seed, epoch), and augmentation uses stateless ops seeded by (seed, position of
  the example in the global stream). A resumed run restarts at `start_step` and
  sees exactly the batches an uninterrupted run would have seen.
* Multi-host: every process reads only its own part of each global batch
  (a contiguous slice of `global_batch_size / process_count` examples), so the
  global batch - and therefore training - does not depend on how many processes
  read it.

Datasets that fit in memory (Fashion-MNIST, MNIST, CIFAR) are read once into host
memory and permuted exactly; larger ones (ImageNet) are streamed from each process's
own file shard with a shuffle buffer (`in_memory=False`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data import augment as aug
from jaxvision.data.prepare import ensure_prepared

# Encoded size under which a split is held in host memory and permuted exactly.
IN_MEMORY_MAX_BYTES = 1 << 30


def _hide_gpus_from_tensorflow():
    # TensorFlow would otherwise grab the accelerator memory that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: nothing more we can do
        pass


_hide_gpus_from_tensorflow()


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple  # (height, width, channels) of the stored images; None dims vary
    split_sizes: dict  # split name -> number of examples


def _process(process_index, process_count):
    import jax  # imported here: this module must not pull JAX in for TF-only users

    return (
        jax.process_index() if process_index is None else process_index,
        jax.process_count() if process_count is None else process_count,
    )


def dataset_info(name: str, data_dir: str | None = None, *, download: bool = True) -> DatasetInfo:
    builder = ensure_prepared(name, data_dir, download=download)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"tfds dataset {name!r} has features {list(features)}; jaxvision's image pipelines "
            "need an 'image' and a 'label' feature."
        )
    return DatasetInfo(
        name=name,
        num_classes=features["label"].num_classes,
        image_shape=tuple(features["image"].shape),
        split_sizes={k: v.num_examples for k, v in builder.info.splits.items()},
    )


def _check_split(builder, split: str) -> int:
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"Unknown split {split!r} for tfds dataset {builder.name!r}; available splits: "
            f"{sorted(builder.info.splits)} (slices such as 'train[:90%]' also work)."
        ) from err


def _check_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"Global batch size {global_batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}); choose e.g. {max(1, global_batch_size // process_count) * process_count}."
        )
    return global_batch_size // process_count


def _to_model_range(image, value_range):
    lo, hi = value_range
    return tf.cast(image, tf.float32) * ((hi - lo) / 255.0) + lo


_IN_MEMORY_CACHE: dict = {}


def _load_in_memory(builder, split):
    """The whole split as NumPy arrays, cached per process (a resumed iterator or a
    second pipeline over the same split does not read it again)."""
    key = (str(builder.data_dir), split)
    if key not in _IN_MEMORY_CACHE:
        if len(_IN_MEMORY_CACHE) >= 4:
            _IN_MEMORY_CACHE.pop(next(iter(_IN_MEMORY_CACHE)))
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        images, labels = np.asarray(arrays["image"]), np.asarray(arrays["label"]).astype(np.int32)
        images.flags.writeable = labels.flags.writeable = False
        _IN_MEMORY_CACHE[key] = images, labels
    return _IN_MEMORY_CACHE[key]


@dataclasses.dataclass
class TrainIterator:
    """Infinite iterator of per-process training batches {"image", "label"} (NumPy)."""

    steps_per_epoch: int
    local_batch_size: int
    _it: Iterator

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


def train_iterator(
    name: str,
    split: str = "train",
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    data_dir: str | None = None,
    augment: str = "none",
    image_size: int | None = None,
    value_range: tuple = (-1.0, 1.0),
    in_memory: bool | None = None,
    shuffle_buffer: int = 10_000,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    download: bool = True,
) -> TrainIterator:
    """Shuffled, augmented, batched training data for this process, starting at `start_step`."""
    if augment not in aug.AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augment!r}; choose one of {aug.AUGMENTATIONS}.")
    pi, pc = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, pc)
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    if in_memory is None:
        in_memory = builder.info.dataset_size < IN_MEMORY_MAX_BYTES
    steps_per_epoch = n // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"Split {split!r} has {n} examples, fewer than one global batch of {global_batch_size}.")

    def preprocess(image, label, position):
        # Seed = (run seed, global stream position): independent of process count.
        ex_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
        image = tf.cast(image, tf.float32)
        image = aug.apply(augment, image, ex_seed, image_size)
        if image_size is not None and augment in ("none", "flip", "pad_crop_flip"):
            image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return {"image": _to_model_range(image, value_range), "label": tf.cast(label, tf.int32)}

    def finish(ds):
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local_batch, drop_remainder=True).prefetch(prefetch).with_options(options)

    if in_memory:
        images, labels = _load_in_memory(builder, split)

        def epochs():
            epoch, offset = divmod(start_step, steps_per_epoch)
            while True:
                order = np.random.default_rng([seed, epoch]).permutation(n)
                order = order[: steps_per_epoch * global_batch_size].reshape(steps_per_epoch, global_batch_size)
                # This process's slice of every global batch, from the resume offset on.
                mine = order[offset:, pi * local_batch : (pi + 1) * local_batch].reshape(-1)
                positions = (
                    epoch * steps_per_epoch * global_batch_size
                    + np.arange(offset, steps_per_epoch)[:, None] * global_batch_size
                    + pi * local_batch
                    + np.arange(local_batch)[None, :]
                ).reshape(-1)
                ds = tf.data.Dataset.from_tensor_slices((images[mine], labels[mine], positions))
                yield from tfds.as_numpy(finish(ds))
                epoch, offset = epoch + 1, 0

    else:
        # Streaming: each process reads its own equal file shard; the shuffle buffer is
        # seeded per epoch, and the resume offset is skipped before decoding.
        shard = tfds.even_splits(split, n=pc, drop_remainder=True)[pi]
        steps_per_epoch = (n // pc) // local_batch

        def epochs():
            epoch, offset = divmod(start_step, steps_per_epoch)
            while True:
                ds = builder.as_dataset(
                    split=shard,
                    shuffle_files=True,
                    read_config=tfds.ReadConfig(shuffle_seed=seed * 100_003 + epoch),
                    decoders={"image": tfds.decode.SkipDecoding()},
                    as_supervised=False,
                )
                ds = ds.shuffle(shuffle_buffer, seed=seed * 100_003 + epoch, reshuffle_each_iteration=False)
                ds = ds.take(steps_per_epoch * local_batch).enumerate().skip(offset * local_batch)
                base = (epoch * steps_per_epoch * pc + pi) * local_batch
                decode = builder.info.features["image"].decode_example
                ds = ds.map(lambda i, ex: (decode(ex["image"]), ex["label"], base + i * pc))
                yield from tfds.as_numpy(finish(ds))
                epoch, offset = epoch + 1, 0

    return TrainIterator(steps_per_epoch=steps_per_epoch, local_batch_size=local_batch, _it=epochs())


def eval_batches(
    name: str,
    split: str = "test",
    *,
    global_batch_size: int,
    data_dir: str | None = None,
    image_size: int | None = None,
    value_range: tuple = (-1.0, 1.0),
    process_index: int | None = None,
    process_count: int | None = None,
    download: bool = True,
) -> Iterator:
    """Every example of `split` exactly once, in order, as per-process batches.

    The last global batch is padded; its `mask` entry is False on padding, so metrics
    count each real example once. All processes yield the same number of batches,
    which collective evaluation steps require.
    """
    pi, pc = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, pc)
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    total = math.ceil(n / global_batch_size) * global_batch_size

    def preprocess(image, label, valid):
        image = tf.cast(image, tf.float32)
        if image_size is not None:
            if builder.info.features["image"].shape[0] is None:
                image = aug.central_crop(image, image_size)
            else:
                image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return {"image": _to_model_range(image, value_range), "label": tf.cast(label, tf.int32), "mask": valid}

    ds = builder.as_dataset(split=split, shuffle_files=False)
    # Pad with copies of the first example (masked out) to fill the last global batch.
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    pad = ds.take(1).repeat(total - n)
    ds = ds.concatenate(pad)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(total)))
    # This process's contiguous slice of every global batch.
    ds = ds.filter(lambda ex, i: (i % global_batch_size) // local_batch == pi)
    ds = ds.map(lambda ex, i: preprocess(ex[0], ex[1], i < n), num_parallel_calls=tf.data.AUTOTUNE)
    return tfds.as_numpy(ds.batch(local_batch).prefetch(2))
