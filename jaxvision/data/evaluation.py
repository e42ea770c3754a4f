"""Evaluation batches (every example once, in order) and raw image batches."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data import augment as aug
from jaxvision.data import features as feat
from jaxvision.data.memory import select_examples, split_labels, subset_requested
from jaxvision.data.pipeline import (
    CLASSIFICATION_FEATURES,
    _as_float_images,
    _check_batch,
    _check_split,
    _options,
    _process,
)
from jaxvision.data.prepare import ensure_prepared


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
    features=CLASSIFICATION_FEATURES,
    max_objects: int = 100,
) -> Iterator:
    """Every example of `split` exactly once, in order, as per-process batches of the
    chosen `features` (see `train_iterator`); image_size resizes fixed-size datasets and
    resizes + centre-crops ones of varying size.

    classes / label_fraction / examples_per_class restrict it to a deterministic subset
    (see `select_examples`).

    The last global batch is padded; its `mask` entry is False on padding, so metrics
    count each real example once. All processes yield the same number of batches,
    which collective evaluation steps require.
    """
    pi, pc = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, pc)
    builder = ensure_prepared(name, data_dir, download=download)
    n = _check_split(builder, split)
    chosen = feat.select(name, feat.feature_specs(builder.info.features), features,
                         reserved={"mask": "padding examples (False on them)"})
    roles = feat.roles(chosen)
    fixed_size = feat.is_fixed_size(chosen)

    def preprocess(ex, valid):
        ex = _as_float_images(ex, roles)
        if image_size is not None:
            if fixed_size:
                ex = aug.resize(ex, roles, [image_size, image_size])
            else:
                ex = aug.central_crop(ex, roles, image_size)
        return {**feat.to_model(ex, roles, value_range), "mask": valid}

    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=feat.decoders(builder.info.features, chosen, skip_images=False))
    ds = ds.map(feat.flatten(chosen, max_objects))
    if subset_requested(classes, label_fraction, examples_per_class):
        keep, subset_labels = select_examples(split_labels(builder, split, name), classes, label_fraction,
                                              examples_per_class, subset_seed)
        kept, relabel = np.zeros(n, bool), np.zeros(n, np.int32)
        kept[keep], relabel[keep] = True, subset_labels
        ds = ds.enumerate().filter(lambda i, ex: tf.gather(kept, i))
        ds = ds.map(lambda i, ex: {**ex, "label": tf.gather(relabel, i)} if "label" in ex else ex)
        n = len(keep)
    total = math.ceil(n / global_batch_size) * global_batch_size
    # Pad with copies of the first example (masked out) to fill the last global batch.
    pad = ds.take(1).repeat(total - n)
    ds = ds.concatenate(pad)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(total)))
    # This process's contiguous slice of every global batch.
    ds = ds.filter(lambda ex, i: (i % global_batch_size) // local_batch == pi)
    ds = ds.map(lambda ex, i: preprocess(ex, i < n), num_parallel_calls=tf.data.AUTOTUNE)
    return tfds.as_numpy(ds.batch(local_batch).prefetch(2).with_options(_options()))


def image_batches(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 256,
    num_images: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    feature: str = "image",
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
    (spec,) = feat.select(name, feat.feature_specs(builder.info.features), (feature,)).values()
    if spec.role != aug.IMAGE or len(spec.keys) != 1:
        raise ValueError(f"feature {feature!r} of {name!r} is not an image ({spec}); name one with feature=...")
    if None in spec.shape:
        raise ValueError(
            f"tfds dataset {name!r} has images of varying size {spec.shape}; FID statistics need a "
            "fixed-size image set (crop or resize it into a folder first)")
    ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda ex: ex[feature]).take(n)
    return n, tfds.as_numpy(ds.batch(batch_size).prefetch(2).with_options(_options()))
