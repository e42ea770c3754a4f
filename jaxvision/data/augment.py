"""Joint augmentation of one example's feature dict, with stateless random ops.

Every random op takes an explicit seed derived from (run seed, global position of the
example in the run), so the augmented batch at a given step is the same in every run,
whatever the tf.data parallelism or the number of processes, and a resumed run sees the
same examples as one that never stopped.

A transform draws its random numbers once and applies them to every feature, by role
(`roles` maps a key of the feature dict to one of):

* "image": float [H, W, C]; bilinear resizes; zero padding.
* "mask": integer (or float) [H, W, C] dense map: segmentation mask, mask of missing
  pixels, depth; nearest resizes, so values are never mixed; padded with
  `mask_pad_value`.
* "boxes": float [..., 4] boxes `[ymin, xmin, ymax, xmax]` normalised by the image height
  and width (tfds's BBoxFeature: 0 is the top / left edge of the image, 1 the bottom /
  right edge; a box covering pixel rows r0..r1 has ymin = r0 / H, ymax = (r1 + 1) / H).
  After a crop a box is clipped to it; a box wholly outside becomes empty (ymax <= ymin or
  xmax <= xmin; `box_is_empty`).
* anything else ("label", "other", keys missing from `roles`): unchanged.

All spatial features ("image" and "mask") share the height and width of the reference
feature (the first "image", else the first "mask"), whose shape draws the crop.
"""

from __future__ import annotations

import tensorflow as tf

AUGMENTATIONS = ("none", "flip", "pad_crop_flip", "inception_crop", "resize_crop")
IMAGE, MASK, BOXES = "image", "mask", "boxes"
SPATIAL = (IMAGE, MASK)


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _keys(roles, *wanted):
    return [k for k, r in roles.items() if r in wanted]


def _reference(feats, roles):
    spatial = [k for k in _keys(roles, IMAGE) if k in feats] or [k for k in _keys(roles, MASK) if k in feats]
    if not spatial:
        raise ValueError(f"this transform needs an 'image' or 'mask' feature to size it; roles: {dict(roles)}")
    return spatial[0]


def _hw(x):
    """(height, width): Python ints where static, else scalar tensors."""
    dynamic = tf.shape(x)
    return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (0, 1))


def _check_same_size(feats, roles, ref):
    for k in _keys(roles, *SPATIAL):
        if k == ref or k not in feats:
            continue
        a, b = feats[ref].shape[:2], feats[k].shape[:2]
        if None not in a and None not in b and tuple(a) != tuple(b):
            raise ValueError(f"feature {k!r} is {tuple(b)} but {ref!r} is {tuple(a)}: spatial features are "
                             "augmented jointly and must share the image's height and width")


def _map(feats, roles, fn_by_role):
    """A copy of `feats` with fn_by_role[role](value) applied to every feature of that role."""
    out = dict(feats)
    for k, role in roles.items():
        if k in feats and role in fn_by_role:
            out[k] = fn_by_role[role](feats[k])
    return out


def box_is_empty(boxes):
    return (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])


def flip_boxes(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def crop_boxes(boxes, top, left, height, width, in_height, in_width):
    """Boxes of an [in_height, in_width] image, in the frame of its crop at (top, left)."""
    f = lambda v: tf.cast(v, tf.float32)  # noqa: E731
    scale = tf.stack([f(in_height), f(in_width), f(in_height), f(in_width)])
    shift = tf.stack([f(top), f(left), f(top), f(left)])
    size = tf.stack([f(height), f(width), f(height), f(width)])
    return tf.clip_by_value((tf.cast(boxes, tf.float32) * scale - shift) / size, 0.0, 1.0)


def random_flip(feats, roles, seed):
    """Horizontal flip with probability 1/2: the draw of tf.image.stateless_random_flip_left_right."""
    flip = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=1.0) < 0.5

    def spatial(x):
        return tf.cond(flip, lambda: tf.reverse(x, [1]), lambda: x)

    return _map(feats, roles, {IMAGE: spatial, MASK: spatial, BOXES: lambda b: tf.where(flip, flip_boxes(b), b)})


def _random_offset(seed, in_hw, out_hw):
    """(top, left) of a random crop: the draw of tf.image.stateless_random_crop on [H, W, C]."""
    in_hw, out_hw = tf.stack(in_hw), tf.stack(out_hw)
    tf.debugging.assert_greater_equal(in_hw, out_hw, message="crop larger than the image")
    limit = tf.concat([in_hw - out_hw + 1, [1]], 0)
    offset = tf.random.stateless_uniform([3], seed=seed, minval=0, maxval=tf.int32.max, dtype=tf.int32) % limit
    return offset[0], offset[1]


def crop(feats, roles, top, left, height, width):
    """Crop every spatial feature at (top, left) to [height, width]; move the boxes with it."""
    ref = _reference(feats, roles)
    in_h, in_w = _hw(feats[ref])
    window = lambda x: tf.slice(x, tf.stack([top, left, 0]), tf.stack([height, width, -1]))  # noqa: E731
    return _map(feats, roles, {IMAGE: window, MASK: window,
                               BOXES: lambda b: crop_boxes(b, top, left, height, width, in_h, in_w)})


def resize(feats, roles, size):
    """Resize every spatial feature to `size` = [height, width]; normalised boxes do not change."""
    return _map(feats, roles, {IMAGE: lambda x: tf.image.resize(x, size, method="bilinear"),
                               MASK: lambda x: tf.image.resize(x, size, method="nearest")})


def resize_short_side(feats, roles, short: int):
    ref = _reference(feats, roles)
    shape = tf.cast(tf.shape(feats[ref])[:2], tf.float32)
    scale = short / tf.reduce_min(shape)
    return resize(feats, roles, tf.cast(tf.round(shape * scale), tf.int32))


def pad_crop_flip(feats, roles, seed, pad: int = 4, mask_pad_value=0):
    """CIFAR-style: zero-pad by `pad`, random crop back to the original size, random flip."""
    ref = _reference(feats, roles)
    _check_same_size(feats, roles, ref)
    crop_seed, flip_seed = _split(seed, 2)
    h, w = _hw(feats[ref])
    top, left = _random_offset(crop_seed, (h + 2 * pad, w + 2 * pad), (h, w))
    paddings = [[pad, pad], [pad, pad], [0, 0]]
    padded = _map(feats, roles, {IMAGE: lambda x: tf.pad(x, paddings),
                                 MASK: lambda x: tf.pad(x, paddings, constant_values=tf.cast(mask_pad_value, x.dtype))})
    out = _map(padded, roles, {IMAGE: lambda x: x[top:top + h, left:left + w],
                               MASK: lambda x: x[top:top + h, left:left + w],
                               BOXES: lambda b: crop_boxes(b, top - pad, left - pad, h, w, h, w)})
    return random_flip(out, roles, flip_seed)


def inception_crop(feats, roles, seed, size: int, area_range=(0.08, 1.0)):
    """Inception-style random-area, random-aspect crop resized to `size`, plus a flip."""
    ref = _reference(feats, roles)
    _check_same_size(feats, roles, ref)
    crop_seed, flip_seed = _split(seed, 2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(feats[ref]),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        area_range=area_range,
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    out = crop(feats, roles, begin[0], begin[1], crop_size[0], crop_size[1])
    out = resize(out, roles, [size, size])
    return random_flip(out, roles, flip_seed)


def resize_crop(feats, roles, seed, size: int, resize_to: int | None = None):
    """Resize the short side to `resize_to` (default 1.14 x size), random crop `size`, flip."""
    _check_same_size(feats, roles, _reference(feats, roles))
    crop_seed, flip_seed = _split(seed, 2)
    out = resize_short_side(feats, roles, resize_to or int(round(size * 1.143)))
    top, left = _random_offset(crop_seed, _hw(out[_reference(out, roles)]), (size, size))
    out = crop(out, roles, top, left, size, size)
    return random_flip(out, roles, flip_seed)


def central_crop(feats, roles, size: int):
    """Evaluation transform for ImageNet-style data: resize the short side, centre crop."""
    out = resize_short_side(feats, roles, int(round(size * 1.143)))
    h, w = _hw(out[_reference(out, roles)])
    return crop(out, roles, (h - size) // 2, (w - size) // 2, size, size)


def augment_features(name: str, feats: dict, roles: dict, seed, image_size: int | None = None, *, mask_pad_value=0):
    """Apply augmentation `name` jointly to one example's features (images as float in [0, 255]).

    seed: int64 [2] stateless seed. image_size: output size of the cropping augmentations
    (default: the reference feature's stored height).
    """
    if name == "none":
        return dict(feats)
    if name == "flip":
        return random_flip(feats, roles, seed)
    if name == "pad_crop_flip":
        return pad_crop_flip(feats, roles, seed, mask_pad_value=mask_pad_value)
    if name in ("inception_crop", "resize_crop"):
        size = image_size or feats[_reference(feats, roles)].shape[0]
        fn = inception_crop if name == "inception_crop" else resize_crop
        return fn(feats, roles, seed, size)
    raise ValueError(f"Unknown augmentation {name!r}; choose one of {AUGMENTATIONS}.")


def apply(name: str, image, seed, image_size: int | None):
    """Apply augmentation `name` to one float image in [0, 255]."""
    return augment_features(name, {"image": image}, {"image": IMAGE}, seed, image_size)["image"]
