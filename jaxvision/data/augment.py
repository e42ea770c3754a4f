"""Per-example image augmentation with stateless random ops.

Every random op takes an explicit seed derived from (run seed, example position in
the stream), so the augmented batch at a given step is the same in every run,
whatever the tf.data parallelism, and a resumed run sees the same images as one
that never stopped.
"""

from __future__ import annotations

import tensorflow as tf

AUGMENTATIONS = ("none", "flip", "pad_crop_flip", "inception_crop", "resize_crop")


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def pad_crop_flip(image, seed, pad: int = 4):
    """CIFAR-style: zero-pad by `pad`, random crop back, random horizontal flip."""
    h, w, c = image.shape
    crop_seed, flip_seed = _split(seed, 2)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, [h, w, c], seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def inception_crop(image, seed, size: int, area_range=(0.08, 1.0)):
    """Inception-style random-area, random-aspect crop resized to `size`, plus a flip."""
    crop_seed, flip_seed = _split(seed, 2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        area_range=area_range,
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_crop(image, seed, size: int, resize: int | None = None):
    """Resize the short side to `resize` (default 1.14 x size), random crop `size`, flip."""
    crop_seed, flip_seed = _split(seed, 2)
    image = resize_short_side(image, resize or int(round(size * 1.143)))
    image = tf.image.stateless_random_crop(image, [size, size, tf.shape(image)[-1]], seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_short_side(image, short: int):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, new, method="bilinear")


def central_crop(image, size: int):
    """Evaluation transform for ImageNet-style data: resize short side, centre crop."""
    image = resize_short_side(image, int(round(size * 1.143)))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def apply(name: str, image, seed, image_size: int | None):
    """Apply augmentation `name` to one float image in [0, 255]."""
    if name == "none":
        return image
    if name == "flip":
        return tf.image.stateless_random_flip_left_right(image, seed=seed)
    if name == "pad_crop_flip":
        return pad_crop_flip(image, seed)
    if name == "inception_crop":
        return inception_crop(image, seed, image_size or image.shape[0])
    if name == "resize_crop":
        return resize_crop(image, seed, image_size or image.shape[0])
    raise ValueError(f"Unknown augmentation {name!r}; choose one of {AUGMENTATIONS}.")
