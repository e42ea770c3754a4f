"""ViT parameter names: which layer a parameter belongs to, and the two block layouts.

The official per-block layout (``Transformer/encoderblock_{i}/...``, see
`jaxvision.models.vit`) and the stacked one of ``ViT(scan_layers=True)``
(``Transformer/encoderblock/...`` with a leading depth axis) convert into each other
exactly, on ``params`` and on anything that mirrors them (a TrainState, optimizer
moments), so a checkpoint of either form loads into the other.

The layer of a parameter (stem, block i, head) is what layer-wise learning-rate decay
needs; `jaxvision.train.param_groups` takes it as a function, so training code names
no ViT parameter.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

__all__ = ["HEAD", "layer_index", "layer_indices", "stack_encoder_blocks", "unstack_encoder_blocks"]

# The classifier head's parameters (a linear probe trains only these).
HEAD = r"^head/"

_BLOCK_NAME = re.compile(r"^Transformer/encoderblock_(\d+)/")
# Everything before the first encoder block: the patch embedding and its stems (shifted patch
# tokenization's norm, the conv stem, a hybrid's ResNet), the CLS token, position embeddings.
_STEM_NAME = re.compile(r"^(embedding/|cls$|Transformer/posembed_input/|spt_norm/|stem_(conv|norm)_\d+/"
                        r"|conv_root/|gn_root/|block\d+/)")


def layer_index(name: str, depth: int) -> int:
    """0 for the stem (patch/position embeddings, CLS), i + 1 for encoder block i,
    depth + 1 for what follows the blocks (final norm, representation layer, head).
    `name` is a parameter's path joined with '/'."""
    match = _BLOCK_NAME.match(name)
    if match:
        return int(match.group(1)) + 1
    if _STEM_NAME.match(name):
        return 0
    return depth + 1


def layer_indices(names: Iterable[str]) -> tuple[dict[str, int], int]:
    """({name: layer_index}, depth + 1) for the parameter names of a ViT: each parameter's
    layer and the top layer (the head's), for `param_groups.layerwise_multipliers_fn`."""
    names = list(names)
    found = [int(m.group(1)) for n in names if (m := _BLOCK_NAME.match(n))]
    depth = max(found) + 1 if found else 0
    return {name: layer_index(name, depth) for name in names}, depth + 1


_BLOCK_KEY = re.compile(r"^encoderblock_(\d+)$")
_STACKED_KEY = "encoderblock"


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _stack_leaves(*leaves):
    if all(_is_array(leaf) for leaf in leaves):
        if all(isinstance(leaf, np.ndarray) for leaf in leaves):
            return np.stack(leaves)
        return jnp.stack(leaves)
    return leaves[0]  # None / optax.MaskedNode placeholders: the same in every block


def _map_block_dicts(tree, fn):
    """Apply `fn` to every dict in `tree` (through dicts, lists, tuples, namedtuples and
    dataclasses such as TrainState / optax states), innermost first."""
    if isinstance(tree, dict) or (hasattr(tree, "items") and hasattr(tree, "keys")):
        return fn({k: _map_block_dicts(v, fn) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple (optax states)
        return type(tree)(*(_map_block_dicts(v, fn) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_block_dicts(v, fn) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: _map_block_dicts(getattr(tree, f.name), fn)
                   for f in dataclasses.fields(tree) if f.init}
        return dataclasses.replace(tree, **changes)
    return tree


def stack_encoder_blocks(tree):
    """Per-block layout -> the stacked layout of ``ViT(scan_layers=True)``.

    Every dict holding ``encoderblock_0 .. encoderblock_{n-1}`` gets one ``encoderblock``
    entry instead, whose leaves are the blocks' leaves stacked along a new leading axis.
    Works on ``params`` and on anything that mirrors them (a TrainState, optimizer moments),
    so a checkpoint of either form can be loaded into the other. Exact: no value changes.
    """
    def fn(d):
        indices = sorted(int(m.group(1)) for k in d if (m := _BLOCK_KEY.match(str(k))))
        if not indices:
            return d
        if indices != list(range(len(indices))):
            raise ValueError(f"encoder blocks {indices} are not numbered 0..{len(indices) - 1}")
        if _STACKED_KEY in d:
            raise ValueError("found both per-block 'encoderblock_i' and stacked 'encoderblock' entries")
        blocks = [d[f"encoderblock_{i}"] for i in indices]
        structure = jtu.tree_structure(blocks[0], is_leaf=lambda x: x is None)
        for i, block in enumerate(blocks[1:], 1):
            if jtu.tree_structure(block, is_leaf=lambda x: x is None) != structure:
                raise ValueError(f"encoderblock_{i} differs in structure from encoderblock_0")
        stacked = jtu.tree_map(_stack_leaves, *blocks, is_leaf=lambda x: x is None)
        out = {k: v for k, v in d.items() if not _BLOCK_KEY.match(str(k))}
        out[_STACKED_KEY] = stacked
        return out

    return _map_block_dicts(tree, fn)


def unstack_encoder_blocks(tree):
    """The stacked layout of ``ViT(scan_layers=True)`` -> per-block official names.

    Inverse of `stack_encoder_blocks`: an ``encoderblock`` entry with leaves of leading size
    ``depth`` becomes ``encoderblock_0 .. encoderblock_{depth-1}``. Exact.
    """
    def fn(d):
        if _STACKED_KEY not in d or not hasattr(d[_STACKED_KEY], "items"):
            return d
        stacked = d[_STACKED_KEY]
        depths = {leaf.shape[0] for leaf in jtu.tree_leaves(stacked) if _is_array(leaf)}
        if len(depths) != 1:
            raise ValueError(f"stacked encoder block leaves disagree on the depth axis: {sorted(depths)}")
        (depth,) = depths
        out = {k: v for k, v in d.items() if k != _STACKED_KEY}
        for i in range(depth):
            out[f"encoderblock_{i}"] = jtu.tree_map(
                lambda leaf, i=i: leaf[i] if _is_array(leaf) else leaf, stacked,
                is_leaf=lambda x: x is None)
        return out

    return _map_block_dicts(tree, fn)
