"""The canonical parameter layout every importer converts to, and tree helpers.

jaxvision's ViT uses the official google-research/vision_transformer names, so the
canonical form of any checkpoint is a flat ``{"a/b/c": np.ndarray}`` dict with those
names (see `jaxvision.models.vit`). Importers return a `Converted`: the flat dict plus
what the source format says about the position embedding and the model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

POSEMB = "Transformer/posembed_input/pos_embedding"
BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/")
RESNET_UNIT_RE = re.compile(r"^block(\d+)/unit(\d+)/")
# ViT attributes a checkpoint's weights need (its `Converted.hints` beyond num_heads).
MODEL_HINTS = ("gelu_approximate", "std_conv_eps", "resnet_convention")


@dataclasses.dataclass
class Converted:
    """A checkpoint in canonical (official) names.

    format: "official", "big_vision", "timm" or "jaxvision".
    params: flat {"a/b/c": array}.
    posemb_prefix: entries before the patch grid in the position embedding (1: a CLS
      entry, 0: none), or None when the format cannot tell (decided from the counts).
    unsupported: source key -> why it has no counterpart in jaxvision's ViT.
    ignored: how many source entries were not model parameters (optimizer state, ...).
    hints: ViT attributes the weights need, e.g. {"gelu_approximate": False} for timm.
    """

    format: str
    params: dict[str, np.ndarray]
    posemb_prefix: int | None = None
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: int = 0
    hints: dict[str, Any] = dataclasses.field(default_factory=dict)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mapping (dict, FrozenDict) -> {"a/b/c": leaf}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def to_numpy(value) -> np.ndarray:
    """Any array (NumPy, JAX, bfloat16 stored as raw 2-byte void) -> a NumPy array.

    bfloat16 becomes float32; other dtypes are kept."""
    array = np.asarray(value)
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:  # big_vision stores bf16 as |V2
        import ml_dtypes

        array = array.view(ml_dtypes.bfloat16)
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return array


def depth_of(names) -> int:
    """Number of encoder blocks named in canonical keys."""
    found = [int(m.group(1)) for n in names if (m := BLOCK_RE.match(n))]
    return max(found) + 1 if found else 0


def resnet_stages_of(names) -> tuple[int, ...] | None:
    """Units per stage of a hybrid's ResNet stem (official names), None for a plain ViT."""
    names = list(names)
    units: dict[int, int] = {}
    for name in names:
        match = RESNET_UNIT_RE.match(name)
        if match:
            stage, unit = int(match.group(1)), int(match.group(2))
            units[stage] = max(units.get(stage, 0), unit)
    if not units:
        return None if "conv_root/kernel" not in names else ()
    return tuple(units.get(s, 0) for s in range(1, max(units) + 1))


def num_heads_of(params: Mapping[str, Any]) -> int | None:
    key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    return int(params[key].shape[1]) if key in params else None


def infer_posemb_prefix(tokens: int, has_cls: bool) -> int:
    """Whether a position table of `tokens` entries holds a CLS entry (1) or not (0),
    from the counts: with a CLS token, a table of g*g + 1 entries has one, g*g not."""
    if not has_cls:
        return 0
    return 0 if math.isqrt(tokens) ** 2 == tokens else 1
