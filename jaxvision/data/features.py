"""Which features a tfds dataset has, what role each plays, and how one example becomes
a dict of fixed-shape tensors.

A feature is named by its tfds path: a top-level key ("image", "label",
"segmentation_mask") or "<sequence>/<key>" for a feature of each object of a
`tfds.features.Sequence` ("objects/bbox", "objects/label"). Its role decides how the
pipeline treats it (see `augment` for the joint transforms):

* "image": a uint8 `Image` -> float32 in the model's value range, bilinear resizes.
* "mask": an `Image` named "*mask*" / "*segmentation*", stored with a colormap, or of a
  dtype other than uint8 -> int32 (float32 if stored as float), nearest resizes.
* "label": a `ClassLabel` -> int32.
* "boxes": a `BBoxFeature` -> float32 [ymin, xmin, ymax, xmax], normalised.
* "other": anything else, passed through unchanged.

Per-object features are padded to `max_objects` rows; the batch then carries
"<sequence>/valid" (bool [max_objects]): True for a real object whose boxes (if any) are
not empty after augmentation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data.augment import BOXES, IMAGE, MASK, box_is_empty

LABEL, OTHER, UNSUPPORTED = "label", "other", "unsupported"
VALID = "valid"  # role of the per-object validity added by the pipeline


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One feature of a dataset as the pipeline sees it."""

    role: str
    shape: tuple  # per example, as tfds stores it; per-object features lead with None
    dtype: str
    num_classes: int | None = None
    group: str | None = None  # the Sequence holding it, for per-object features
    keys: tuple = ()  # where it sits in tfds's nested example dict


def _role(name: str, feature) -> str:
    if isinstance(feature, tfds.features.Image):
        leaf = name.rsplit("/", 1)[-1].lower()
        masky = "mask" in leaf or "segmentation" in leaf or getattr(feature, "_use_colormap", False)
        return MASK if masky or np.dtype(feature.np_dtype) != np.uint8 else IMAGE
    if isinstance(feature, tfds.features.BBoxFeature):
        return BOXES
    if isinstance(feature, tfds.features.ClassLabel):
        return LABEL
    if isinstance(feature, (tfds.features.FeaturesDict, tfds.features.Sequence, tfds.features.Video)):
        return UNSUPPORTED
    return OTHER


def _spec(path, feature, group, keys) -> FeatureSpec:
    role = _role(path, feature)
    if group is not None and role in (IMAGE, MASK):
        role = UNSUPPORTED  # per-object images (instance masks) would need ragged batching
    shape = tuple(getattr(feature, "shape", ()) or ()) if role != UNSUPPORTED else ()
    dtype = np.dtype(feature.np_dtype).name if role != UNSUPPORTED else ""
    return FeatureSpec(role=role, shape=((None,) + shape) if group is not None else shape, dtype=dtype,
                       num_classes=getattr(feature, "num_classes", None), group=group, keys=keys)


def feature_specs(features) -> dict:
    """{path: FeatureSpec} of every feature of a tfds FeaturesDict, flattened one level."""
    specs = {}
    for name, feature in features.items():
        if isinstance(feature, tfds.features.Sequence):
            inner = feature.feature
            if isinstance(inner, tfds.features.FeaturesDict):
                for sub, f in inner.items():
                    specs[f"{name}/{sub}"] = _spec(f"{name}/{sub}", f, name, (name, sub))
            else:
                specs[name] = _spec(name, inner, name, (name,))
        elif isinstance(feature, tfds.features.FeaturesDict):
            for sub, f in feature.items():
                specs[f"{name}/{sub}"] = _spec(f"{name}/{sub}", f, None, (name, sub))
        else:
            specs[name] = _spec(name, feature, None, (name,))
    return specs


def select(dataset: str, specs: dict, requested, *, reserved=None) -> dict:
    """The specs of the `requested` feature paths (a sequence's name selects all its
    supported features), in the order asked, with a clear error for unknown ones.
    reserved: {key: what the pipeline uses it for} that no feature may take."""
    if isinstance(requested, str):
        requested = (requested,)
    reserved = reserved or {}
    chosen = {}
    for name in requested:
        members = [name] if name in specs else [
            p for p, s in specs.items() if s.group == name and s.role != UNSUPPORTED]
        if not members:
            raise ValueError(f"tfds dataset {dataset!r} has no feature {name!r}; its features are {sorted(specs)} "
                             "(choose them with features=(...)).")
        for p in members:
            if specs[p].role == UNSUPPORTED:
                raise ValueError(f"feature {p!r} of {dataset!r} ({specs[p]}) is not supported by the batch "
                                 "pipeline: leave it out of features=(...).")
            if p in reserved:
                raise ValueError(f"feature {p!r} of {dataset!r} clashes with the key the pipeline adds for "
                                 f"{reserved[p]}; leave it out of features=(...).")
            chosen[p] = specs[p]
    for group in groups(chosen):
        if f"{group}/{VALID}" in specs:
            raise ValueError(f"{dataset!r} has a feature '{group}/{VALID}', the key jaxvision uses for which "
                             "objects are real; it cannot batch this sequence.")
    return chosen


def groups(chosen: dict) -> list:
    return list(dict.fromkeys(s.group for s in chosen.values() if s.group is not None))


def roles(chosen: dict) -> dict:
    out = {p: s.role for p, s in chosen.items()}
    out.update({f"{g}/{VALID}": VALID for g in groups(chosen)})
    return out


def is_fixed_size(chosen: dict) -> bool:
    return all(None not in s.shape for s in chosen.values() if s.role in (IMAGE, MASK))


def decoders(features, chosen: dict, *, skip_images: bool):
    """tfds `decoders` that parse only the chosen features (None when that is all of them);
    skip_images leaves top-level images encoded, to decode after skipping examples."""
    skip = {s.keys[0]: tfds.decode.SkipDecoding() for s in chosen.values()
            if skip_images and s.role in (IMAGE, MASK) and len(s.keys) == 1}
    tops = {s.keys[0] for s in chosen.values()}
    partial = {}
    for s in chosen.values():
        if len(s.keys) == 1:
            partial[s.keys[0]] = True
        else:
            partial.setdefault(s.keys[0], {})[s.keys[1]] = True
    whole = tops == set(features.keys()) and all(
        set(partial[t]) == set(features[t].feature.keys() if isinstance(features[t], tfds.features.Sequence)
                                else features[t].keys())
        for t in tops if isinstance(partial[t], dict))
    if whole:
        return skip or None
    return tfds.decode.PartialDecoding(partial, decoders=skip or None)


def decode_skipped(features, chosen: dict):
    """fn(example) decoding the images that `decoders(..., skip_images=True)` left encoded."""
    skipped = [s.keys[0] for s in chosen.values() if s.role in (IMAGE, MASK) and len(s.keys) == 1]

    def fn(ex):
        return {**ex, **{k: features[k].decode_example(ex[k]) for k in skipped}}

    return fn


def flatten(chosen: dict, max_objects: int):
    """fn(example) -> {path: tensor}, per-object features padded to `max_objects` rows,
    plus "<sequence>/valid" for each sequence (True on the real rows)."""

    def pad(x, n):
        x = x[:max_objects]
        x = tf.pad(x, [[0, max_objects - tf.minimum(n, max_objects)]] + [[0, 0]] * (x.shape.rank - 1))
        return tf.ensure_shape(x, [max_objects] + x.shape.as_list()[1:])

    def fn(ex):
        out = {}
        for p, s in chosen.items():
            x = ex
            for k in s.keys:
                x = x[k]
            out[p] = x
        for g in groups(chosen):
            members = [p for p, s in chosen.items() if s.group == g]
            n = tf.shape(out[members[0]])[0]
            check = tf.debugging.assert_less_equal(
                n, max_objects, message=f"an example has more objects in {g!r} than max_objects={max_objects}: "
                "raise max_objects")
            with tf.control_dependencies([check]):
                for p in members:
                    out[p] = pad(out[p], n)
                out[f"{g}/{VALID}"] = tf.range(max_objects) < n
        return out

    return fn


def to_model(feats: dict, roles_: dict, value_range) -> dict:
    """Final dtypes and ranges: images into value_range, labels and masks int32, boxes
    float32, and objects whose every box became empty marked not valid."""
    lo, hi = value_range
    out = dict(feats)
    for k, role in roles_.items():
        x = feats[k]
        if role == IMAGE:
            out[k] = tf.cast(x, tf.float32) * ((hi - lo) / 255.0) + lo
        elif role in (LABEL, MASK):
            out[k] = tf.cast(x, tf.float32 if x.dtype.is_floating else tf.int32)
        elif role == BOXES:
            out[k] = tf.cast(x, tf.float32)
    for k, role in roles_.items():
        if role == VALID:
            group = k[: -len(VALID) - 1]
            for b, r in roles_.items():
                if r == BOXES and b.startswith(group + "/"):
                    out[k] = out[k] & ~box_is_empty(out[b])
    return out
