"""timm / PyTorch ViT state dicts <-> jaxvision parameters.

timm's ``VisionTransformer`` names (PyTorch layouts: Linear weights are (out, in),
the patch convolution is (out, in, kh, kw)):

    cls_token (1, 1, D)               pos_embed (1, [1 +] gh*gw, D)
    patch_embed.proj.{weight (D, C, ph, pw), bias}
    blocks.{i}.norm1.{weight, bias}   blocks.{i}.attn.qkv.{weight (3D, D), bias (3D,)}
    blocks.{i}.attn.proj.{weight (D, D), bias}
    blocks.{i}.norm2.{weight, bias}   blocks.{i}.mlp.fc1 / fc2.{weight, bias}
    norm.{weight, bias}               head.{weight (classes, D), bias}
    pre_logits.fc.{weight, bias}      (representation layer of older timm versions)

The fused ``qkv`` rows are [query; key; value], each ``num_heads * head_dim`` rows in
head-major order, which is our (D, heads, head_dim) kernel transposed. A state dict
does not record ``num_heads``: it comes from the model template (or the standard
variants by width).

Two architectural facts matter for equal outputs: timm's MLP uses the exact (erf) GELU,
so a jaxvision ViT needs ``gelu_approximate=False`` for timm weights (the converter
says so in ``hints``), and a timm GAP model matches ours when built with
``global_pool='avg', class_token=False, fc_norm=False`` (final norm before pooling, as
in big_vision); timm's default ``fc_norm`` for 'avg' normalises after pooling, which
jaxvision's ViT does not do, so such checkpoints are refused by name.

Hybrids (``vit_base_r50_s16_384``, ``vit_small_r26_s32_384``): the ResNet-v2 stem sits
under ``patch_embed.backbone.`` (``stem.conv``, ``stem.norm``,
``stages.{s}.blocks.{b}.{conv1,norm1,...,downsample.conv,downsample.norm}``) and maps to
the official names (``conv_root``, ``gn_root``, ``block{s+1}/unit{b+1}/{conv1,gn1,...,
conv_proj,gn_proj}``); ``patch_embed.proj`` is the 1x1 ``embedding``. timm's
``StdConv2dSame`` standardises with eps 1e-8 inside the square root and its GroupNorm
uses PyTorch's eps, so such weights need ``std_conv_eps=1e-8, resnet_convention="timm"``
(the converter says so in ``hints``).

Reading ``.safetensors`` needs neither PyTorch nor `safetensors`; ``.pth``/``.pt``/``.bin``
files need PyTorch (imported only then).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxvision.pretrained.layout import POSEMB, Converted, depth_of, flatten, infer_posemb_prefix, to_numpy
from jaxvision.pretrained.safetensors_io import read_safetensors, write_safetensors

__all__ = ["from_timm", "read_state_dict", "save_timm", "timm_kwargs", "to_timm", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Standard ViT widths -> heads (Ti, S, M, B, L, H): timm state dicts do not store num_heads.
HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}

_BLOCK = r"blocks\.(\d+)\."
_UNSUPPORTED = (
    (r"^fc_norm\.", "timm normalises after pooling (fc_norm=True, its default for global_pool='avg'); "
     "jaxvision's ViT normalises before pooling, so only fc_norm=False GAP models convert"),
    (r"^norm_pre\.", "a pre-transformer LayerNorm (pre_norm=True, CLIP-style) is not supported"),
    (r"^reg_token$", "register tokens are not supported"),
    (r"^(dist_token|head_dist\.)", "DeiT distillation token/head is not supported"),
    (_BLOCK + r"ls[12]\.", "layer scale (init_values) is not supported"),
    (_BLOCK + r"attn\.(q_norm|k_norm)\.", "QK-norm is not supported"),
    (_BLOCK + r"(attn\.norm|mlp\.norm)\.", "normalisation inside attention/MLP is not supported"),
    (r"^attn_pool\.", "attention pooling head (global_pool='map') is not supported"),
    (r"^patch_embed\.norm\.", "a patch-embedding LayerNorm is not supported"),
)


_BACKBONE = "patch_embed.backbone."
_TIMM_RESNET = re.compile(r"^(?:stem\.(conv|norm)|stages\.(\d+)\.blocks\.(\d+)\.(conv[123]|norm[123]|downsample\.conv|"
                          r"downsample\.norm))\.(weight|bias)$")
_OFFICIAL_RESNET = re.compile(r"^(?:(conv_root|gn_root)|block(\d+)/unit(\d+)/(conv[123]|gn[123]|conv_proj|gn_proj))/"
                              r"(kernel|scale|bias)$")
_TIMM_TO_OFFICIAL_LAYER = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "norm1": "gn1", "norm2": "gn2",
                           "norm3": "gn3", "downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}
_OFFICIAL_TO_TIMM_LAYER = {v: k for k, v in _TIMM_TO_OFFICIAL_LAYER.items()}
# What timm's hybrid weights need of a jaxvision ViT besides the exact GELU.
HYBRID_HINTS = {"std_conv_eps": 1e-8, "resnet_convention": "timm"}


def _resnet_from_timm(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """A timm hybrid backbone entry (without its prefix) in official name and layout."""
    match = _TIMM_RESNET.match(key)
    if match is None:
        return None
    stem, stage, block, layer, kind = match.groups()
    if stem:
        name = {"conv": "conv_root", "norm": "gn_root"}[stem]
    else:
        name = f"block{int(stage) + 1}/unit{int(block) + 1}/{_TIMM_TO_OFFICIAL_LAYER[layer]}"
    if name.split("/")[-1].startswith("conv"):
        if kind != "weight":
            return None  # convs of the hybrid have no bias
        return f"{name}/kernel", value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> HWIO
    return f"{name}/{'scale' if kind == 'weight' else 'bias'}", value


def _resnet_to_timm(name: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    match = _OFFICIAL_RESNET.match(name)
    if match is None:
        return None
    root, block, unit, layer, kind = match.groups()
    if root:
        layer_name = "stem." + {"conv_root": "conv", "gn_root": "norm"}[root]
    else:
        layer_name = f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{_OFFICIAL_TO_TIMM_LAYER[layer]}"
    if kind == "kernel":
        return f"{_BACKBONE}{layer_name}.weight", value.transpose(3, 2, 0, 1)
    return f"{_BACKBONE}{layer_name}.{'weight' if kind == 'scale' else 'bias'}", value


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A timm/PyTorch state dict from ``.safetensors`` (no PyTorch needed) or ``.pth``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: expected a .safetensors or {'/'.join(TORCH_SUFFIXES)} file")
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path.name} needs PyTorch (pip install torch); or convert it once to .safetensors, "
            "which jaxvision reads without PyTorch"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _torch_to_numpy(v) for k, v in unwrap_state_dict(state).items() if hasattr(v, "shape")}


def _torch_to_numpy(tensor):
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return to_numpy(tensor)


def unwrap_state_dict(state: Mapping) -> Mapping:
    """Training checkpoints wrap the weights ({'model': ...}, {'state_dict': ...}, ...);
    DistributedDataParallel prefixes keys with 'module.'."""
    for key in ("model", "state_dict", "model_ema", "module"):
        if isinstance(state.get(key), Mapping) and not hasattr(state[key], "shape"):
            state = state[key]
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _heads(width: int, num_heads: int | None) -> int:
    if num_heads:
        return int(num_heads)
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    raise ValueError(
        f"a timm state dict does not record the number of attention heads and width {width} is not a "
        f"standard one ({HEADS_BY_WIDTH}); pass num_heads=..."
    )


def from_timm(state_dict: Mapping[str, Any], *, num_heads: int | None = None) -> Converted:
    """timm state dict (NumPy or torch tensors) -> canonical `Converted`."""
    state = {k: _torch_to_numpy(v) for k, v in unwrap_state_dict(state_dict).items()}
    if "patch_embed.proj.weight" not in state:
        raise ValueError(
            "not a timm ViT state dict: no 'patch_embed.proj.weight'; first keys: " + str(sorted(state)[:8])
        )
    width = state["patch_embed.proj.weight"].shape[0]
    heads = _heads(width, num_heads)
    out: dict[str, np.ndarray] = {}
    unsupported: dict[str, str] = {}

    def linear(prefix, name):  # (out, in) -> (in, out)
        out[f"{name}/kernel"] = state.pop(f"{prefix}.weight").T
        if f"{prefix}.bias" in state:
            out[f"{name}/bias"] = state.pop(f"{prefix}.bias")

    def norm(prefix, name):
        out[f"{name}/scale"] = state.pop(f"{prefix}.weight")
        out[f"{name}/bias"] = state.pop(f"{prefix}.bias")

    for key in list(state):
        for pattern, why in _UNSUPPORTED:
            if re.match(pattern, key):
                unsupported[key] = why
                state.pop(key)
                break

    hybrid = any(k.startswith(_BACKBONE) for k in state)
    for key in [k for k in state if k.startswith(_BACKBONE)]:
        converted = _resnet_from_timm(key[len(_BACKBONE):], state[key])
        if converted is None:
            unsupported[key] = ("not part of the hybrids' ResNet-v2 stem (non-pre-activation bottlenecks, "
                                "'same' stem): other timm backbones are not supported")
        else:
            out[converted[0]] = converted[1]
        state.pop(key)
    out["embedding/kernel"] = state.pop("patch_embed.proj.weight").transpose(2, 3, 1, 0)
    if "patch_embed.proj.bias" in state:
        out["embedding/bias"] = state.pop("patch_embed.proj.bias")
    has_cls = "cls_token" in state
    if has_cls:
        out["cls"] = state.pop("cls_token")
    posemb_prefix = None
    if "pos_embed" in state:
        out[POSEMB] = state.pop("pos_embed")
        # no_embed_class=True models (DeiT III, ...) have a CLS token but no CLS entry.
        posemb_prefix = infer_posemb_prefix(out[POSEMB].shape[1], has_cls)

    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(_BLOCK, k))), default=-1)
    for i in range(depth):
        t, b = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        try:
            norm(f"{t}.norm1", f"{b}/LayerNorm_0")
            norm(f"{t}.norm2", f"{b}/LayerNorm_2")
            linear(f"{t}.mlp.fc1", f"{b}/MlpBlock_3/Dense_0")
            linear(f"{t}.mlp.fc2", f"{b}/MlpBlock_3/Dense_1")
            qkv = state.pop(f"{t}.attn.qkv.weight")
            proj = state.pop(f"{t}.attn.proj.weight")
        except KeyError as err:
            raise ValueError(f"timm state dict block {i} lacks {err.args[0]!r}: not a standard ViT block") from None
        inner = qkv.shape[0] // 3
        if inner % heads:
            raise ValueError(f"{t}.attn.qkv.weight has {inner} rows per projection, not divisible by "
                             f"num_heads={heads}; pass the right num_heads")
        head_dim = inner // heads
        attn = f"{b}/MultiHeadDotProductAttention_1"
        qkv_bias = state.pop(f"{t}.attn.qkv.bias", None)
        for j, name in enumerate(("query", "key", "value")):
            out[f"{attn}/{name}/kernel"] = qkv[j * inner:(j + 1) * inner].T.reshape(width, heads, head_dim)
            if qkv_bias is not None:
                out[f"{attn}/{name}/bias"] = qkv_bias[j * inner:(j + 1) * inner].reshape(heads, head_dim)
        out[f"{attn}/out/kernel"] = proj.T.reshape(heads, head_dim, width)
        if f"{t}.attn.proj.bias" in state:
            out[f"{attn}/out/bias"] = state.pop(f"{t}.attn.proj.bias")

    if "norm.weight" in state:
        norm("norm", "Transformer/encoder_norm")
    if "pre_logits.fc.weight" in state:
        linear("pre_logits.fc", "pre_logits")
    if "head.weight" in state:
        linear("head", "head")
    for key in state:  # whatever is left has no known meaning
        unsupported[key] = "not a parameter of a standard timm VisionTransformer"
    hints = {"gelu_approximate": False, "num_heads": heads, **(HYBRID_HINTS if hybrid else {})}
    return Converted("timm", {k: np.asarray(v) for k, v in out.items()}, posemb_prefix, unsupported, hints=hints)


def to_timm(params: Mapping) -> dict[str, np.ndarray]:
    """jaxvision ViT params -> timm state dict (NumPy arrays, timm's key order).

    Load it with ``model.load_state_dict({k: torch.from_numpy(v) ...})`` into a timm
    ``VisionTransformer`` built with `timm_kwargs`. A ``pre_logits`` layer is written as
    ``pre_logits.fc`` (older timm versions); current timm has no such layer.
    """
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    sd: dict[str, np.ndarray] = {}
    if "cls" in flat:
        sd["cls_token"] = flat["cls"]
    if POSEMB in flat:
        sd["pos_embed"] = flat[POSEMB]
    for name, value in flat.items():  # a hybrid's ResNet stem, in timm's order of the official names
        converted = _resnet_to_timm(name, value)
        if converted is not None:
            sd[converted[0]] = converted[1]
    sd["patch_embed.proj.weight"] = flat["embedding/kernel"].transpose(3, 2, 0, 1)
    if "embedding/bias" in flat:
        sd["patch_embed.proj.bias"] = flat["embedding/bias"]
    for i in range(depth_of(flat)):
        t, b = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        attn = f"{b}/MultiHeadDotProductAttention_1"
        width = flat[f"{attn}/query/kernel"].shape[0]
        sd[f"{t}.norm1.weight"] = flat[f"{b}/LayerNorm_0/scale"]
        sd[f"{t}.norm1.bias"] = flat[f"{b}/LayerNorm_0/bias"]
        sd[f"{t}.attn.qkv.weight"] = np.concatenate(
            [flat[f"{attn}/{n}/kernel"].reshape(width, -1).T for n in ("query", "key", "value")])
        sd[f"{t}.attn.qkv.bias"] = np.concatenate(
            [flat[f"{attn}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")])
        sd[f"{t}.attn.proj.weight"] = flat[f"{attn}/out/kernel"].reshape(-1, width).T
        sd[f"{t}.attn.proj.bias"] = flat[f"{attn}/out/bias"]
        sd[f"{t}.norm2.weight"] = flat[f"{b}/LayerNorm_2/scale"]
        sd[f"{t}.norm2.bias"] = flat[f"{b}/LayerNorm_2/bias"]
        for name, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            sd[f"{t}.mlp.{name}.weight"] = flat[f"{b}/MlpBlock_3/{dense}/kernel"].T
            sd[f"{t}.mlp.{name}.bias"] = flat[f"{b}/MlpBlock_3/{dense}/bias"]
    sd["norm.weight"] = flat["Transformer/encoder_norm/scale"]
    sd["norm.bias"] = flat["Transformer/encoder_norm/bias"]
    if "pre_logits/kernel" in flat:
        sd["pre_logits.fc.weight"] = flat["pre_logits/kernel"].T
        sd["pre_logits.fc.bias"] = flat["pre_logits/bias"]
    if "head/kernel" in flat:
        sd["head.weight"] = flat["head/kernel"].T
        sd["head.bias"] = flat["head/bias"]
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def timm_kwargs(params: Mapping, *, img_size=None) -> dict[str, Any]:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` that give
    the architecture of jaxvision `params` (``global_pool='token'`` for CLS models,
    ``'avg'`` with ``class_token=False, fc_norm=False`` for GAP models).

    img_size defaults to the square grid of the position embedding times the patch size.
    """
    flat = flatten(params)
    if "conv_root/kernel" in flat:
        raise ValueError("a hybrid ResNet+ViT is built in timm with its backbone, not from VisionTransformer "
                         "keyword arguments: use timm.create_model('vit_base_r50_s16_384', num_classes=...) "
                         "(R50+B/16) and load to_timm(params) into it")
    ph, pw, channels, width = flat["embedding/kernel"].shape
    has_cls = "cls" in flat
    if img_size is None:
        tokens = flat[POSEMB].shape[1] - int(has_cls)
        side = int(round(tokens ** 0.5))
        img_size = (side * ph, side * pw)
    mlp_dim = flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]
    if "pre_logits/kernel" in flat:
        raise ValueError("current timm ViTs have no representation layer (pre_logits); drop it first")
    return dict(
        img_size=img_size,
        patch_size=(ph, pw),
        in_chans=channels,
        num_classes=flat["head/kernel"].shape[1] if "head/kernel" in flat else 0,
        embed_dim=width,
        depth=depth_of(flat),
        num_heads=flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape[1],
        mlp_ratio=mlp_dim / width,
        class_token=has_cls,
        global_pool="token" if has_cls else "avg",
        fc_norm=False,
    )


def save_timm(params: Mapping, path) -> None:
    """Export to the timm layout: ``.safetensors`` (no PyTorch needed) or ``.pth`` (PyTorch)."""
    sd = to_timm(params)
    path = Path(path)
    if path.suffix == ".safetensors":
        write_safetensors({k: v.astype(np.float32) for k, v in sd.items()}, path, {"format": "pt"})
    elif path.suffix in TORCH_SUFFIXES:
        import torch

        torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}, path)
    else:
        raise ValueError(f"{path}: export to .safetensors or {'/'.join(TORCH_SUFFIXES)}")
