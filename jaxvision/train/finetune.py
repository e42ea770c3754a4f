"""Fine-tuning helpers on parameter trees: frozen groups and per-parameter learning rates.

Both work on parameter *names* ('Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel'),
so they apply to any tree with jaxvision's ViT names and are pure Python at trace time.

    frozen = frozen_mask_fn(trainable=r"^head/")           # a linear probe
    tx = optim.make_optimizer("sgd", lr, frozen_mask=frozen)
    tx = optax.chain(tx, scale_by_multipliers(layerwise_multipliers_fn(0.75)))
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import optax
from flax import traverse_util

__all__ = [
    "LINEAR_PROBE",
    "combine_multipliers",
    "frozen_mask_fn",
    "layer_index",
    "layerwise_multipliers_fn",
    "pattern_multipliers_fn",
    "scale_by_multipliers",
]

# Only the head trains: a linear probe on frozen features.
LINEAR_PROBE = r"^head/"


def _names(params) -> dict[tuple, str]:
    return {path: "/".join(str(p) for p in path) for path in traverse_util.flatten_dict(params)}


def _map_names(params, fn):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: fn("/".join(str(p) for p in path)) for path in flat})


def frozen_mask_fn(*, trainable: str | None = None, frozen: str | None = None) -> Callable:
    """A callable params -> tree of bools (True = frozen) for `make_optimizer(frozen_mask=...)`.

    trainable: regex; parameters whose name matches it train, all others are frozen
      (``LINEAR_PROBE`` = only the head). frozen: regex of parameters to freeze (e.g.
      r"^(embedding|cls|Transformer/posembed_input)/" for a frozen stem). Give one.
    """
    if (trainable is None) == (frozen is None):
        raise ValueError("give exactly one of trainable= or frozen=")
    if trainable is not None:
        pattern = re.compile(trainable)
        return lambda params: _map_names(params, lambda name: not pattern.search(name))
    pattern = re.compile(frozen)
    return lambda params: _map_names(params, lambda name: bool(pattern.search(name)))


def layer_index(name: str, depth: int) -> int:
    """0 for the stem (patch/position embeddings, CLS), i + 1 for encoder block i,
    depth + 1 for what follows the blocks (final norm, representation layer, head)."""
    match = re.match(r"^Transformer/encoderblock_(\d+)/", name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(("embedding/", "cls", "Transformer/posembed_input/")):
        return 0
    return depth + 1


def _depth(names: Sequence[str]) -> int:
    found = [int(m.group(1)) for n in names if (m := re.match(r"^Transformer/encoderblock_(\d+)/", n))]
    return max(found) + 1 if found else 0


def layerwise_multipliers_fn(decay: float) -> Callable:
    """Layer-wise learning-rate decay (BEiT, MAE fine-tuning): the head and final norm
    train at the full rate, block i at ``decay ** (depth - i)``, the stem at
    ``decay ** (depth + 1)``. Returns params -> tree of floats."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise decay must be in (0, 1], got {decay}")

    def fn(params):
        depth = _depth(list(_names(params).values()))
        return _map_names(params, lambda name: float(decay ** (depth + 1 - layer_index(name, depth))))

    return fn


def pattern_multipliers_fn(rules: Sequence[str | tuple[str, float]]) -> Callable:
    """Learning-rate multipliers by name: rules "REGEX=FACTOR" (or (regex, factor));
    the first matching rule wins, unmatched parameters keep 1.0."""
    parsed = []
    for rule in rules:
        if isinstance(rule, str):
            regex, sep, factor = rule.rpartition("=")
            if not sep:
                raise ValueError(f"learning-rate rule {rule!r} must look like 'REGEX=FACTOR'")
            rule = (regex, float(factor))
        parsed.append((re.compile(rule[0]), float(rule[1])))

    def fn(params):
        def factor(name):
            return next((f for pattern, f in parsed if pattern.search(name)), 1.0)

        return _map_names(params, factor)

    return fn


def combine_multipliers(*fns: Callable) -> Callable:
    """Product of several params -> multipliers functions."""

    def fn(params):
        trees = [f(params) for f in fns]
        return jax.tree_util.tree_map(lambda *xs: float(math.prod(xs)), *trees)

    return fn


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
    """Scale each update by a per-parameter constant: a tree of floats or a callable
    params -> tree (evaluated on the update tree's structure, at trace time). Chained
    after an optimizer this sets per-parameter learning rates (decoupled weight decay
    included, as with a per-group learning rate)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        factors = multipliers(updates) if callable(multipliers) else multipliers
        scaled = jax.tree_util.tree_map(lambda u, f: u if f == 1.0 else u * f, updates, factors)
        return scaled, state

    return optax.GradientTransformation(init, update)
