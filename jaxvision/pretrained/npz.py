"""Official vision_transformer / AugReg and big_vision ``.npz`` checkpoints.

Both are NumPy zip archives of flat ``/``-joined keys.

Official (google-research/vision_transformer, AugReg): pre-Linen module names, which
number submodules across types inside a block (``LayerNorm_0``,
``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``); the position
embedding lives at ``Transformer/posembed_input/pos_embedding`` and, for CLS models,
includes an entry for the CLS token; ``pre_logits`` (the representation layer) is
present in ImageNet-21k pre-training checkpoints. These are jaxvision's own names.

big_vision: Linen names, numbered per type (``LayerNorm_0``, ``MultiHeadDotProductAttention_0``,
``LayerNorm_1``, ``MlpBlock_0``); a top-level ``pos_embedding`` with patch entries only
(big_vision adds it before prepending the CLS token, so our CLS entry is zero); with
``scan=True`` one ``Transformer/encoderblock`` whose leaves are stacked over depth.

Hybrid checkpoints (``R50+ViT-B_16.npz``) add the ResNet stem under the official names
``conv_root``, ``gn_root``, ``block{s}/unit{u}/...`` (`jaxvision.models.resnet`), read
as they are; their ``embedding`` is the 1x1 conv on the ResNet's features.

Either may sit under a prefix: ``opt/target/`` (Flax optimizer checkpoints),
``params/`` (big_vision training checkpoints) or ``params/img/`` (the image tower of
a two-tower model such as SigLIP). bfloat16 arrays stored as raw 2-byte values are
read as float32.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from jaxvision.pretrained.layout import POSEMB, Converted, flatten, infer_posemb_prefix, to_numpy

__all__ = ["detect_npz_layout", "from_npz_dict", "read_npz", "save_npz", "to_big_vision", "to_official"]

PREFIXES = ("", "opt/target/", "params/", "params/img/", "target/")

# big_vision (Linen, per-type numbering) -> official (pre-Linen, numbered across types).
_BIG_VISION_TO_OFFICIAL = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_OFFICIAL_TO_BIG_VISION = {v: k for k, v in _BIG_VISION_TO_OFFICIAL.items()}
_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/([^/]+)/(.*)$")

_UNSUPPORTED = (
    (re.compile(r"^MAPHead_0/"), "multihead attention pooling head (big_vision pool_type='map') has no "
     "counterpart in jaxvision's ViT (pool='cls' or 'gap')"),
)


def read_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: to_numpy(archive[key]) for key in archive.files}


def _strip_prefix(flat: Mapping[str, np.ndarray], prefix: str | None):
    if prefix is None:
        candidates = [p for p in PREFIXES if f"{p}embedding/kernel" in flat]
        if not candidates:
            raise ValueError(
                "not a ViT .npz checkpoint: no 'embedding/kernel' entry under any of the known prefixes "
                f"{[p or '(none)' for p in PREFIXES]}; first keys: {sorted(flat)[:8]}"
            )
        prefix = max(candidates, key=len)
    kept = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    return kept, len(flat) - len(kept), prefix


def detect_npz_layout(keys) -> str:
    """'big_vision' or 'official' from (prefix-stripped) keys."""
    keys = list(keys)
    if "pos_embedding" in keys or "Transformer/pos_embedding" in keys:
        return "big_vision"
    if any(k.startswith("Transformer/encoderblock/") for k in keys):  # scanned blocks
        return "big_vision"
    if any("/MultiHeadDotProductAttention_0/" in k or "/MlpBlock_0/" in k for k in keys):
        return "big_vision"
    return "official"


def _unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in flat.items():
        if key.startswith("Transformer/encoderblock/"):
            rest = key[len("Transformer/encoderblock/"):]
            for i in range(value.shape[0]):
                out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
        else:
            out[key] = value
    return out


def from_npz_dict(flat: Mapping[str, np.ndarray], *, layout: str | None = None,
                  prefix: str | None = None) -> Converted:
    """Flat npz entries -> canonical `Converted` (official names)."""
    flat = {k: to_numpy(v) for k, v in flat.items()}
    params, ignored, _ = _strip_prefix(flat, prefix)
    layout = layout or detect_npz_layout(params)
    if layout not in ("official", "big_vision"):
        raise ValueError(f"unknown .npz layout {layout!r}; expected 'official' or 'big_vision'")
    unsupported = {}
    for key in list(params):
        for pattern, why in _UNSUPPORTED:
            if pattern.match(key):
                unsupported[key] = why
                params.pop(key)
                break

    # A hybrid's ResNet stem was trained with the official weight standardisation.
    hints = {"std_conv_eps": 1e-5, "resnet_convention": "official"} if "conv_root/kernel" in params else {}
    if layout == "official":
        posemb_prefix = None
        if POSEMB in params:
            posemb_prefix = 1 if "cls" in params else 0
        return Converted("official", params, posemb_prefix, unsupported, ignored, hints)

    params = _unstack_scanned(params)
    out: dict[str, np.ndarray] = {}
    posemb_prefix = None
    for key, value in params.items():
        match = _BLOCK_RE.match(key)
        if match:
            index, module, rest = match.groups()
            module = _BIG_VISION_TO_OFFICIAL.get(module, module)
            out[f"Transformer/encoderblock_{index}/{module}/{rest}"] = value
        elif key == "pos_embedding":  # current big_vision: patch entries only
            out[POSEMB] = value
            posemb_prefix = 0
        elif key in ("Transformer/pos_embedding", POSEMB):  # older big_vision checkpoints
            out[POSEMB] = value
            posemb_prefix = infer_posemb_prefix(value.shape[-2], "cls" in params)
        else:
            out[key] = value
    return Converted("big_vision", out, posemb_prefix, unsupported, ignored, hints)


def to_official(params: Mapping) -> dict[str, np.ndarray]:
    """jaxvision params (nested) -> flat official-layout entries (the same names)."""
    return {k: np.asarray(v) for k, v in flatten(params).items()}


def to_big_vision(params: Mapping) -> dict[str, np.ndarray]:
    """jaxvision params -> flat big_vision-layout entries (unscanned, no prefix).

    big_vision adds the position embedding before prepending the CLS token, so the CLS
    entry of our table is folded into ``cls`` (exact: both are added to the same token).
    """
    out = {}
    flat = to_official(params)
    for key, value in flat.items():
        match = _BLOCK_RE.match(key)
        if match:
            index, module, rest = match.groups()
            out[f"Transformer/encoderblock_{index}/{_OFFICIAL_TO_BIG_VISION.get(module, module)}/{rest}"] = value
        elif key == POSEMB:
            has_cls = "cls" in flat
            out["pos_embedding"] = value[:, 1:] if has_cls else value
            if has_cls:
                out["cls"] = flat["cls"] + value[:, :1]
        elif key != "cls":
            out[key] = value
    return out


def save_npz(params: Mapping, path, *, layout: str = "official", prefix: str = "") -> None:
    """Write jaxvision params as an ``.npz`` in the official or big_vision layout."""
    if layout == "official":
        flat = to_official(params)
    elif layout == "big_vision":
        flat = to_big_vision(params)
    else:
        raise ValueError(f"layout must be 'official' or 'big_vision', got {layout!r}")
    np.savez(path, **{prefix + k: v for k, v in flat.items()})
