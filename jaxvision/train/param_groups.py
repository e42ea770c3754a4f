"""Parameter groups by name: frozen parameters and per-parameter learning rates.

Both work on parameter *names* (a path joined with '/', e.g. 'encoder/block_3/kernel')
and are pure Python at trace time. Nothing here knows a model: what a layer is (for
layer-wise decay) comes from the model's side, e.g. `jaxvision.models.vit_layout`.

    frozen = frozen_mask_fn(trainable=r"^head/")           # a linear probe
    tx = optim.make_optimizer("sgd", lr, frozen_mask=frozen)
    tx = optax.chain(tx, scale_by_multipliers(layerwise_multipliers_fn(0.75, layer_indices)))
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import optax
from flax import traverse_util

__all__ = [
    "combine_multipliers",
    "frozen_mask_fn",
    "layerwise_multipliers_fn",
    "pattern_multipliers_fn",
    "scale_by_multipliers",
]


def _names(params) -> dict[tuple, str]:
    return {path: "/".join(str(p) for p in path) for path in traverse_util.flatten_dict(params)}


def _map_names(params, fn):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: fn("/".join(str(p) for p in path)) for path in flat})


def frozen_mask_fn(*, trainable: str | None = None, frozen: str | None = None) -> Callable:
    """A callable params -> tree of bools (True = frozen) for `make_optimizer(frozen_mask=...)`.

    trainable: regex; parameters whose name matches it train, all others are frozen
      (a linear probe: the head's names). frozen: regex of parameters to freeze (e.g. a
      model's stem). Give one.
    """
    if (trainable is None) == (frozen is None):
        raise ValueError("give exactly one of trainable= or frozen=")
    if trainable is not None:
        pattern = re.compile(trainable)
        return lambda params: _map_names(params, lambda name: not pattern.search(name))
    pattern = re.compile(frozen)
    return lambda params: _map_names(params, lambda name: bool(pattern.search(name)))


def layerwise_multipliers_fn(decay: float, layer_indices: Callable) -> Callable:
    """Layer-wise learning-rate decay (BEiT, MAE fine-tuning): a parameter of layer l
    trains at ``decay ** (top - l)``, the top layer (the head) at the full rate.
    `layer_indices(names) -> ({name: l}, top)` says the model's layers (for a ViT:
    `jaxvision.models.vit_layout.layer_indices`). Returns params -> tree of floats."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise decay must be in (0, 1], got {decay}")

    def fn(params):
        layers, top = layer_indices(list(_names(params).values()))
        return _map_names(params, lambda name: float(decay ** (top - layers[name])))

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
