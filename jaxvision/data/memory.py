"""Host-memory copies of a split, and deterministic subsets of one by class and budget."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import features as feat

_IN_MEMORY_CACHE: dict = {}


def load_in_memory(builder, split: str, chosen: dict, max_objects: int) -> dict:
    """{path: NumPy array over the whole split} of the chosen features (fixed-size ones),
    per-object features padded to `max_objects`, cached per process (a resumed iterator
    or a second pipeline over the same split does not read it again)."""
    key = (str(builder.data_dir), split, tuple(chosen), max_objects)
    if key not in _IN_MEMORY_CACHE:
        if len(_IN_MEMORY_CACHE) >= 4:
            _IN_MEMORY_CACHE.pop(next(iter(_IN_MEMORY_CACHE)))
        decoders = feat.decoders(builder.info.features, chosen, skip_images=False)
        if feat.groups(chosen):  # objects padded to max_objects first
            n = builder.info.splits[split].num_examples
            ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
            ds = ds.map(feat.flatten(chosen, max_objects)).batch(max(n, 1)).prefetch(1)
            arrays = tfds.as_numpy(ds.get_single_element())
        else:
            whole = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False,
                                                     decoders=decoders))
            arrays = {p: _get(whole, s.keys) for p, s in chosen.items()}
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for k, s in chosen.items():
            if s.role == feat.LABEL:
                arrays[k] = arrays[k].astype(np.int32)
        for v in arrays.values():
            v.flags.writeable = False
        _IN_MEMORY_CACHE[key] = arrays
    return _IN_MEMORY_CACHE[key]


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def split_labels(builder, split: str, dataset: str, chosen: dict | None = None, max_objects: int = 1):
    """The 'label' of every example of `split`, in stored order (for subsets); read with the
    `chosen` features when they include it, so the split is read once."""
    specs = feat.feature_specs(builder.info.features)
    if specs.get("label", feat.FeatureSpec("", (), "")).role != feat.LABEL or specs["label"].shape != ():
        raise ValueError(f"classes / label_fraction / examples_per_class select by the 'label' feature, which "
                         f"tfds dataset {dataset!r} does not have (features: {sorted(specs)}).")
    if chosen is None or "label" not in chosen:
        chosen, max_objects = {"label": specs["label"]}, 1
    return load_in_memory(builder, split, chosen, max_objects)["label"]


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


def subset_requested(classes, label_fraction, examples_per_class) -> bool:
    return classes is not None or label_fraction is not None or examples_per_class is not None
