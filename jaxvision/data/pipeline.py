"""tfds input pipelines yielding feature dicts (image classification, GANs, and any
dataset whose features `jaxvision.data.features` knows: masks, boxes, second images).

Two guarantees shape this module:

* Determinism: the batch at global step `s` is a pure function of (dataset, split,
  seed, global batch size, s). Shuffling is a NumPy permutation seeded by
  (seed, epoch), and augmentation uses stateless ops seeded by (seed, global position
  of the example in the run: step * global batch + row in the global batch). A resumed
  run restarts at `start_step` and sees exactly the batches an uninterrupted run would
  have seen.
* Multi-host: every process reads only its own part of each global batch
  (a contiguous slice of `global_batch_size / process_count` examples), so the
  global batch - and therefore training - does not depend on how many processes
  read it. Streamed datasets read a file shard per process, so which examples make up
  a global batch depends on the process count there; how each is augmented does not.

Datasets that fit in memory (Fashion-MNIST, MNIST, CIFAR) are read once into host
memory and permuted exactly; larger ones (ImageNet), or ones with images of varying
size, are streamed from each process's own file shard with a shuffle buffer
(`in_memory=False`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data import augment as aug
from jaxvision.data import features as feat
from jaxvision.data.memory import load_in_memory, select_examples, split_labels, subset_requested
from jaxvision.data.prepare import ensure_prepared

__all__ = ["DatasetInfo", "TrainIterator", "dataset_info", "select_examples", "train_iterator"]

# Encoded size under which a split is held in host memory and permuted exactly.
IN_MEMORY_MAX_BYTES = 1 << 30
CLASSIFICATION_FEATURES = ("image", "label")


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
    num_classes: int | None  # of the 'label' feature; None without one
    image_shape: tuple | None  # (height, width, channels) of the 'image' feature; None dims vary
    split_sizes: dict  # split name -> number of examples
    features: dict = dataclasses.field(default_factory=dict)  # path -> features.FeatureSpec

    def require(self, *paths: str, purpose: str = "this task") -> "DatasetInfo":
        """self, or a clear error naming the features `purpose` needs and the dataset lacks."""
        groups = {s.group for s in self.features.values()}
        missing = [p for p in paths if p not in self.features and p not in groups]
        if missing:
            raise ValueError(f"{purpose} needs the feature(s) {missing}, which tfds dataset {self.name!r} does not "
                             f"have (its features: {sorted(self.features)}).")
        return self


def _process(process_index, process_count):
    import jax  # imported here: this module must not pull JAX in for TF-only users

    return (
        jax.process_index() if process_index is None else process_index,
        jax.process_count() if process_count is None else process_count,
    )


def dataset_info(name: str, data_dir: str | None = None, *, download: bool = True) -> DatasetInfo:
    builder = ensure_prepared(name, data_dir, download=download)
    specs = feat.feature_specs(builder.info.features)
    label, image = specs.get("label"), specs.get("image")
    return DatasetInfo(
        name=name,
        num_classes=label.num_classes if label is not None and label.role == feat.LABEL else None,
        image_shape=image.shape if image is not None and image.role in aug.SPATIAL else None,
        split_sizes={k: v.num_examples for k, v in builder.info.splits.items()},
        features=specs,
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
    in training that wait landed on the step loop at epoch boundaries (12-16 s stalls in 6
    of 25 epochs of the main job). Without autotuning, AUTOTUNE parallelism becomes
    tf.data's fixed default (at most one call per core), which still feeds the main job
    several times faster than it trains (the measurements are in the README).
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    if threads is not None:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def _as_float_images(ex, roles):
    return {k: tf.cast(v, tf.float32) if roles.get(k) == aug.IMAGE else v for k, v in ex.items()}


def global_positions(epoch, steps_per_epoch, global_batch, local_batch, process_index, index):
    """Position in the run of the example at `index` of this process's stream of an epoch:
    the augmentation seed, the same whatever the process layout. With one process it is
    epoch * steps_per_epoch * batch + index."""
    step, row = index // local_batch, index % local_batch
    return (epoch * steps_per_epoch + step) * global_batch + process_index * local_batch + row


@dataclasses.dataclass
class TrainIterator:
    """Infinite iterator of per-process training batches, dicts of NumPy arrays."""

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
    features=CLASSIFICATION_FEATURES,
    max_objects: int = 100,
    mask_pad_value: int = 0,
) -> TrainIterator:
    """Shuffled, augmented, batched training data for this process, starting at `start_step`.

    features: the tfds feature paths each batch carries ("objects" = all of that
    sequence's features), augmented jointly; see `jaxvision.data.features` for roles,
    dtypes and the per-object padding to `max_objects` rows. mask_pad_value fills the
    border that pad_crop_flip adds to masks.

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
    chosen = feat.select(name, feat.feature_specs(builder.info.features), features)
    roles = feat.roles(chosen)
    subset = subset_requested(classes, label_fraction, examples_per_class)
    if in_memory is None:
        in_memory = builder.info.dataset_size < IN_MEMORY_MAX_BYTES and feat.is_fixed_size(chosen)
    elif in_memory and not feat.is_fixed_size(chosen):
        raise ValueError(f"{name!r} has images of varying size: they cannot be held as one array; use in_memory=False")
    if subset:
        if not in_memory:
            raise ValueError("classes / label_fraction / examples_per_class need the in-memory pipeline "
                             f"(in_memory=True; {name!r} is streamed)")
        keep, subset_labels = select_examples(split_labels(builder, split, name, chosen, max_objects), classes,
                                              label_fraction, examples_per_class, subset_seed)
        n = len(keep)
    steps_per_epoch = n // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"Split {split!r} has {n} examples, fewer than one global batch of {global_batch_size}.")

    def preprocess(ex, position):
        ex_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
        ex = aug.augment_features(augment, _as_float_images(ex, roles), roles, ex_seed, image_size,
                         mask_pad_value=mask_pad_value)
        if image_size is not None and augment in ("none", "flip", "pad_crop_flip"):
            ex = aug.resize(ex, roles, [image_size, image_size])
        return feat.to_model(ex, roles, value_range)

    def finish(ds):
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local_batch, drop_remainder=True).prefetch(prefetch).with_options(_options(threads))

    if in_memory:
        arrays = load_in_memory(builder, split, chosen, max_objects)
        if subset:
            arrays = {k: v[keep] for k, v in arrays.items()}
            if "label" in arrays:
                arrays["label"] = subset_labels

        def epochs():
            epoch, offset = divmod(start_step, steps_per_epoch)
            while True:
                order = np.random.default_rng([seed, epoch]).permutation(n)
                order = order[: steps_per_epoch * global_batch_size].reshape(steps_per_epoch, global_batch_size)
                # This process's slice of every global batch, from the resume offset on.
                mine = order[offset:, pi * local_batch : (pi + 1) * local_batch].reshape(-1)
                positions = global_positions(epoch, steps_per_epoch, global_batch_size, local_batch, pi,
                                             np.arange(offset * local_batch, steps_per_epoch * local_batch))
                ds = tf.data.Dataset.from_tensor_slices(({k: v[mine] for k, v in arrays.items()}, positions))
                yield from tfds.as_numpy(finish(ds))
                epoch, offset = epoch + 1, 0

    else:
        # Streaming: each process reads its own equal file shard; the shuffle buffer is
        # seeded per epoch, and the resume offset is skipped before decoding.
        shard = tfds.even_splits(split, n=pc, drop_remainder=True)[pi]
        steps_per_epoch = (n // pc) // local_batch
        decoders = feat.decoders(builder.info.features, chosen, skip_images=True)
        decode = feat.decode_skipped(builder.info.features, chosen)
        flatten = feat.flatten(chosen, max_objects)

        def epochs():
            epoch, offset = divmod(start_step, steps_per_epoch)
            while True:
                ds = builder.as_dataset(
                    split=shard,
                    shuffle_files=True,
                    read_config=tfds.ReadConfig(shuffle_seed=seed * 100_003 + epoch),
                    decoders=decoders,
                    as_supervised=False,
                )
                ds = ds.shuffle(shuffle_buffer, seed=seed * 100_003 + epoch, reshuffle_each_iteration=False)
                ds = ds.take(steps_per_epoch * local_batch).enumerate().skip(offset * local_batch)
                # i counts this process's examples of the epoch; the seed uses the global position.
                ds = ds.map(lambda i, ex, e=epoch: (
                    flatten(decode(ex)), global_positions(e, steps_per_epoch, global_batch_size, local_batch, pi, i)))
                yield from tfds.as_numpy(finish(ds))
                epoch, offset = epoch + 1, 0

    return TrainIterator(steps_per_epoch=steps_per_epoch, local_batch_size=local_batch, _it=epochs())

