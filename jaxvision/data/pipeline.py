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


def _options(threads: int | None = None) -> tf.data.Options:
    """Options of every pipeline here: deterministic order, and no autotuning.

    Autotuning is off because of how an iterator ends, not how it runs: its optimisation
    thread sleeps between rounds for a period that doubles up to 60 s, and destroying the
    iterator waits for that sleep to end. The training pipeline is rebuilt every epoch, so
    in training that wait landed on the step loop at epoch boundaries: 6 of 25 boundaries of
    the main job stalled for 12-16 s (about 70 s of its 15 minutes; found with gdb: the main
    thread in ~RootDataset::Iterator, the autotune thread in Model::OptimizeLoop). Without
    autotuning, AUTOTUNE parallelism becomes tf.data's fixed default (at most one call per
    core). On the 2-core development CPU the Fashion-MNIST pipeline alone then gave 11-18k
    img/s (8-11k with autotuning, same process, alternating), 6-9x what the main job
    trains on.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    if threads is not None:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


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


def select_examples(labels, classes=None, label_fraction=None, examples_per_class=None, subset_seed: int = 0):
    """(indices, new_labels): a deterministic subset of a split, by class and label budget.

    classes: original label ids to keep, relabelled 0..len(classes)-1 in the given order
    (None: all classes, labels unchanged). label_fraction: keep this fraction of each
    class (at least one example); examples_per_class: keep this many of each class
    (k-shot). The examples kept of class c are the first ones of a permutation seeded by
    (subset_seed, c), so they depend on neither the training seed nor the batch size nor
    the process count, and a smaller budget keeps a subset of a larger one. Indices are
    returned in stored order.
    """
    labels = np.asarray(labels)
    if label_fraction is not None and examples_per_class is not None:
        raise ValueError("give label_fraction or examples_per_class, not both")
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    if examples_per_class is not None and examples_per_class < 1:
        raise ValueError(f"examples_per_class must be >= 1, got {examples_per_class}")
    present = np.unique(labels)
    if classes is None:
        classes = [int(c) for c in present]
        mapping = {c: c for c in classes}
    else:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes {classes} has duplicates")
        missing = sorted(set(classes) - set(int(c) for c in present))
        if missing:
            raise ValueError(f"classes {missing} do not occur in this split (labels present: {present.tolist()})")
        mapping = {c: i for i, c in enumerate(classes)}
    keep = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if label_fraction is not None or examples_per_class is not None:
            k = (max(1, int(round(label_fraction * len(members)))) if label_fraction is not None
                 else examples_per_class)
            if k > len(members):
                raise ValueError(f"examples_per_class={k} but class {c} has only {len(members)} examples")
            members = np.random.default_rng([subset_seed, c]).permutation(members)[:k]
        keep.append(members)
    keep = np.sort(np.concatenate(keep))
    new_labels = np.array([mapping[int(c)] for c in labels[keep]], np.int32)
    return keep, new_labels


def _subset_requested(classes, label_fraction, examples_per_class) -> bool:
    return classes is not None or label_fraction is not None or examples_per_class is not None


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
    classes=None,
    label_fraction: float | None = None,
    examples_per_class: int | None = None,
    subset_seed: int = 0,
    threads: int | None = None,
) -> TrainIterator:
    """Shuffled, augmented, batched training data for this process, starting at `start_step`.

    classes / label_fraction / examples_per_class train on a deterministic subset (see
    `select_examples`); they need the in-memory path (datasets under 1 GiB).

    threads: give the pipeline its own pool of this many threads (tf.data's
    private_threadpool_size, one intra-op thread per op) instead of TensorFlow's shared pools
    sized to every core, so it competes less with XLA for a small CPU. None: TensorFlow's
    defaults. The batches are the same either way (the pipeline is deterministic).
    """
    if augment not in aug.AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augment!r}; choose one of {aug.AUGMENTATIONS}.")
    pi, pc = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, pc)
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    subset = _subset_requested(classes, label_fraction, examples_per_class)
    if in_memory is None:
        in_memory = builder.info.dataset_size < IN_MEMORY_MAX_BYTES
    if subset:
        if not in_memory:
            raise ValueError("classes / label_fraction / examples_per_class need the in-memory pipeline "
                             f"(in_memory=True; {name!r} is streamed)")
        keep, subset_labels = select_examples(_load_in_memory(builder, split)[1], classes, label_fraction,
                                              examples_per_class, subset_seed)
        n = len(keep)
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
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local_batch, drop_remainder=True).prefetch(prefetch).with_options(_options(threads))

    if in_memory:
        images, labels = _load_in_memory(builder, split)
        if subset:
            images, labels = images[keep], subset_labels

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
    classes=None,
    label_fraction: float | None = None,
    examples_per_class: int | None = None,
    subset_seed: int = 0,
) -> Iterator:
    """Every example of `split` exactly once, in order, as per-process batches.

    classes / label_fraction / examples_per_class restrict it to a deterministic subset
    (see `select_examples`; read through host memory).

    The last global batch is padded; its `mask` entry is False on padding, so metrics
    count each real example once. All processes yield the same number of batches,
    which collective evaluation steps require.
    """
    pi, pc = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, pc)
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    if _subset_requested(classes, label_fraction, examples_per_class):
        images, labels = _load_in_memory(builder, split)
        keep, subset_labels = select_examples(labels, classes, label_fraction, examples_per_class, subset_seed)
        n = len(keep)
    total = math.ceil(n / global_batch_size) * global_batch_size

    def preprocess(image, label, valid):
        image = tf.cast(image, tf.float32)
        if image_size is not None:
            if builder.info.features["image"].shape[0] is None:
                image = aug.central_crop(image, image_size)
            else:
                image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return {"image": _to_model_range(image, value_range), "label": tf.cast(label, tf.int32), "mask": valid}

    if _subset_requested(classes, label_fraction, examples_per_class):
        ds = tf.data.Dataset.from_tensor_slices((images[keep], subset_labels))
    else:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    # Pad with copies of the first example (masked out) to fill the last global batch.
    pad = ds.take(1).repeat(total - n)
    ds = ds.concatenate(pad)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(total)))
    # This process's contiguous slice of every global batch.
    ds = ds.filter(lambda ex, i: (i % global_batch_size) // local_batch == pi)
    ds = ds.map(lambda ex, i: preprocess(ex[0], ex[1], i < n), num_parallel_calls=tf.data.AUTOTUNE)
    return tfds.as_numpy(ds.batch(local_batch).prefetch(2).with_options(_options()))


def image_batches(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 256,
    num_images: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> tuple[int, Iterator[np.ndarray]]:
    """(count, batches): the first `num_images` (default all) stored images of `split`, in
    stored order, as raw uint8 NumPy batches [B, H, W, C] - no shuffling, scaling or
    resizing. For feature extraction (FID statistics of a reference set)."""
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    if num_images is not None:
        if not 0 < num_images <= n:
            raise ValueError(f"num_images={num_images}: split {split!r} of {name!r} has {n} examples")
        n = num_images
    shape = builder.info.features["image"].shape
    if None in shape:
        raise ValueError(
            f"tfds dataset {name!r} has images of varying size {shape}; FID statistics need a "
            "fixed-size image set (crop or resize it into a folder first)")
    ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda ex: ex["image"]).take(n)
    return n, tfds.as_numpy(ds.batch(batch_size).prefetch(2).with_options(_options()))
