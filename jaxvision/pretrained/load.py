"""`load_pretrained`: any supported ViT checkpoint into a jaxvision parameter template.

    model = ViT(num_classes=10, variant="B/16", gelu_approximate=True)
    template = jax.eval_shape(model.init, key, jnp.zeros((1, 384, 384, 3)))["params"]
    params, report = load_pretrained("B_16-i21k.npz", template, head="reset",
                                     drop_representation=True)
    print(report.summary())

The template (arrays or `jax.ShapeDtypeStruct`s) fixes the names, shapes and dtypes of
the result. Every template entry is either loaded, adapted (position embeddings
resampled to the template's grid, input channels adapted, CLS entry inserted),
re-initialised on request (the head), or reported as missing; every checkpoint entry
is either used, deliberately dropped (head, representation layer) or reported as
unexpected; shape mismatches name the parameter and the dimension that differs.
With ``strict=True`` (default) any missing, unexpected or mismatched entry raises
`PretrainedLoadError` carrying the report; with ``strict=False`` those template
entries are returned unchanged (merge an abstract template with a fresh
initialisation via `merge_params`). `LoadReport`, `PretrainedLoadError` and the
reasons they give live in `jaxvision.pretrained.report` (importable from here too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxvision.pretrained import npz as npz_lib
from jaxvision.pretrained import timm as timm_lib
from jaxvision.pretrained.layout import MODEL_HINTS, POSEMB, Converted, depth_of, flatten, resnet_stages_of, unflatten
from jaxvision.pretrained.report import (LoadReport, PretrainedLoadError, check_hybrid, explain_mismatch,
                                        why_missing, why_unexpected)
from jaxvision.pretrained.resample import resample_pos_embedding, square_grid

__all__ = [
    "FORMATS",
    "LoadReport",
    "PretrainedLoadError",
    "detect_format",
    "infer_vit_config",
    "load_pretrained",
    "merge_params",
    "read_checkpoint",
]

FORMATS = ("official", "big_vision", "timm")


# --------------------------------------------------------------------------- reading


def detect_format(source) -> str:
    """'official', 'big_vision' or 'timm' for a path or a mapping of arrays."""
    if isinstance(source, Converted):
        return source.format
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ValueError(
                f"{path} is a folder: for a jaxvision run pass jaxvision.train.load_params({str(path)!r}); "
                "otherwise give the checkpoint file (.npz, .safetensors, .pth)"
            )
        if path.suffix == ".safetensors" or path.suffix in timm_lib.TORCH_SUFFIXES:
            return "timm"
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = archive.files
            flat = dict.fromkeys(keys)
            stripped, _, _ = npz_lib._strip_prefix(flat, None)
            return npz_lib.detect_npz_layout(stripped)
        raise ValueError(f"{path}: unknown checkpoint type; expected .npz, .safetensors or "
                         f"{'/'.join(timm_lib.TORCH_SUFFIXES)}")
    flat = flatten(source)
    if any(k.endswith("patch_embed.proj.weight") for k in flat):
        return "timm"
    stripped, _, _ = npz_lib._strip_prefix(flat, None)
    return npz_lib.detect_npz_layout(stripped)


def read_checkpoint(source, *, format: str = "auto", prefix: str | None = None,
                    num_heads: int | None = None) -> Converted:
    """A checkpoint (path, flat or nested mapping, or `Converted`) in canonical names."""
    if isinstance(source, Converted):
        return source
    if format == "auto":
        format = detect_format(source)
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {FORMATS} or 'auto'")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        raw = timm_lib.read_state_dict(path) if format == "timm" else npz_lib.read_npz(path)
    else:
        raw = source if format == "timm" else flatten(source)
    if format == "timm":
        return timm_lib.from_timm(raw, num_heads=num_heads)
    return npz_lib.from_npz_dict(raw, layout=format, prefix=prefix)


def infer_vit_config(source, *, format: str = "auto", num_heads: int | None = None,
                     prefix: str | None = None) -> dict[str, Any]:
    """The ViT architecture a checkpoint holds, as `jaxvision.models.ViT` keyword
    arguments (plus ``num_classes`` of its head, 0 if none, ``image_size`` when the
    position grid is square, and ``in_channels``)."""
    ckpt = read_checkpoint(source, format=format, prefix=prefix, num_heads=num_heads)
    p = ckpt.params
    ph, pw, channels, width = p["embedding/kernel"].shape
    stages = resnet_stages_of(p)
    stride = 1
    if stages is not None:  # a hybrid: the embedding sees the ResNet's features
        from jaxvision.models.resnet import resnet_stride

        stride = resnet_stride(stages)
        channels = p["conv_root/kernel"].shape[2]
    attn = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    config = dict(
        width=int(width),
        depth=depth_of(p),
        mlp_dim=int(p["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]),
        num_heads=int(p[attn].shape[1]),
        patch_size=(int(ph), int(pw)),
        pool="cls" if "cls" in p else "gap",
        representation_size=int(p["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in p else None,
        num_classes=int(p["head/kernel"].shape[1]) if "head/kernel" in p else 0,
        gelu_approximate=bool(ckpt.hints.get("gelu_approximate", True)),
        in_channels=int(channels),
        image_size=None,
    )
    if stages is not None:
        config.update(resnet_stages=stages, resnet_width=int(p["conv_root/kernel"].shape[3]),
                      **{k: v for k, v in ckpt.hints.items() if k in MODEL_HINTS and k != "gelu_approximate"})
    if POSEMB in p:
        patches = p[POSEMB].shape[-2] - (ckpt.posemb_prefix or 0)
        side = int(round(patches ** 0.5))
        if side * side == patches:
            config["image_size"] = (side * int(ph) * stride, side * int(pw) * stride)
    return config


# --------------------------------------------------------------------------- matching

def _leaf_info(leaf):
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _fold_normalization(kernel, bias, mean, std):
    """Patch embedding for [-1, 1] inputs that equals the original on (x01 - mean) / std."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    if kernel.shape[2] not in (len(mean), 1) or len(mean) != len(std):
        raise ValueError(f"input_normalization has {len(mean)} channels, the checkpoint's patch "
                         f"embedding {kernel.shape[2]}")
    k = kernel.astype(np.float64)
    new_kernel = k / (2.0 * std)[None, None, :, None]
    new_bias = bias.astype(np.float64) + np.einsum("hwcd,c->d", k, (0.5 - mean) / std)
    return new_kernel.astype(kernel.dtype), new_bias.astype(bias.dtype)


def load_pretrained(
    source,
    template: Mapping,
    *,
    format: str = "auto",
    prefix: str | None = None,
    head: str = "keep",
    drop_representation: bool = False,
    grid: Sequence[int] | None = None,
    image_size: Sequence[int] | int | None = None,
    source_grid: Sequence[int] | None = None,
    align_corners: bool = True,
    adapt_channels: bool = False,
    input_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    num_heads: int | None = None,
    strict: bool = True,
    model=None,
) -> tuple[dict, LoadReport]:
    """Load `source` into the structure of `template`; returns (params, report).

    source: ``.npz`` (official vision_transformer/AugReg or big_vision, detected from the
      keys), ``.safetensors`` / ``.pth`` (timm), a mapping of arrays in any of these
      layouts, or a `Converted`.
    template: the model's ``params`` (arrays or ShapeDtypeStructs, e.g. from
      ``jax.eval_shape(model.init, ...)``).
    head: "keep" (load the checkpoint's head; shapes must match), "reset" (zero-initialised
      new head, the fine-tuning default), "auto" (keep if the shapes match, else reset).
    drop_representation: drop the checkpoint's ``pre_logits`` layer (build the model with
      ``representation_size=None``).
    grid / image_size: the model's patch grid (gh, gw), or its image size from which the grid
      follows; default: the template's token count as a square grid (same count as the
      checkpoint: no resampling). source_grid: the checkpoint's grid when not square.
    align_corners: position embedding resampling convention (True: scipy.ndimage.zoom
      order=1, as vision_transformer/big_vision; False: pixel-centre bilinear, as timm).
    adapt_channels: fit the patch embedding to the model's input channels (RGB -> grey sums
      the filters, grey -> RGB replicates them / 3).
    input_normalization: (mean, std) per channel, in [0, 1] pixel units, that the checkpoint
      was trained with (e.g. ImageNet's for many timm models); folded into the patch
      embedding so the model takes jaxvision's [-1, 1] inputs. (0.5, 0.5) is the identity.
    num_heads: for timm state dicts, which do not record it (default: from the template).
    model: optional ViT module; checked against the checkpoint's hints (GELU form, a
      hybrid's normalisation convention).
    """
    if head not in ("keep", "reset", "auto"):
        raise ValueError(f"head must be 'keep', 'reset' or 'auto', got {head!r}")
    tmpl = flatten(template)
    if num_heads is None:
        key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
        num_heads = int(tmpl[key].shape[1]) if key in tmpl else None
    ckpt = read_checkpoint(source, format=format, prefix=prefix, num_heads=num_heads)
    name = str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"
    report = LoadReport(source=name, format=ckpt.format, ignored=ckpt.ignored,
                        hints={k: v for k, v in ckpt.hints.items() if k in MODEL_HINTS})
    report.unexpected.update(ckpt.unsupported)
    check_hybrid(resnet_stages_of(ckpt.params), resnet_stages_of(tmpl), report)
    for key, value in report.hints.items():
        if model is not None and getattr(model, key, value) != value:
            raise ValueError(f"{ckpt.format} weights were trained with {key}={value!r}; "
                             f"build the ViT with {key}={value!r}")
    params = dict(ckpt.params)

    if "pre_logits/kernel" in tmpl and drop_representation:
        raise ValueError("drop_representation=True but the model has a representation layer: build it with "
                         "representation_size=None")
    if drop_representation:
        for key in [k for k in params if k.startswith("pre_logits/")]:
            report.dropped[key] = "representation layer dropped on request"
            params.pop(key)

    if input_normalization is not None and np.ndim(params.get("embedding/kernel")) == 2:
        # stem="spt": a Dense over LayerNorm-ed shifted patches; pixels reach it only after the
        # LayerNorm, so no input normalisation can be folded into it.
        raise ValueError("input_normalization needs a convolutional patch embedding; this checkpoint's "
                         "embedding is a Dense (stem='spt'): feed the model [-1, 1] images instead")
    # Channels are adapted on convolutional patch embeddings only (4-D); a Dense one (stem="spt")
    # of another shape is reported as mismatched below, like any other leaf.
    if "embedding/kernel" in params and "embedding/kernel" in tmpl and np.ndim(params["embedding/kernel"]) == 4:
        kernel, bias = params["embedding/kernel"], params.get("embedding/bias")
        if input_normalization is not None:
            if bias is None:
                raise ValueError("input_normalization needs a patch embedding bias")
            kernel, bias = _fold_normalization(kernel, bias, *input_normalization)
            params["embedding/bias"] = bias
            report.adapted["embedding"] = (f"input normalisation mean={tuple(input_normalization[0])} "
                                           f"std={tuple(input_normalization[1])} folded in for [-1, 1] inputs")
        want = tmpl["embedding/kernel"].shape[2]
        have = kernel.shape[2]
        if adapt_channels and want != have:
            if want == 1:
                kernel = kernel.sum(axis=2, keepdims=True)
            elif have == 1:
                kernel = np.repeat(kernel, want, axis=2) / want
            else:
                raise ValueError(f"adapt_channels: cannot map {have} input channels to {want}")
            report.adapted["embedding/kernel"] = (
                f"{have} -> {want} input channels ({'summed' if want == 1 else 'replicated / ' + str(want)}: "
                "the same response to a grey image)")
        params["embedding/kernel"] = kernel

    out: dict[str, Any] = {}
    used: set[str] = set()
    ckpt_depth, model_depth = depth_of(params), depth_of(tmpl)
    for key, leaf in tmpl.items():
        shape, dtype = _leaf_info(leaf)
        is_head = key.startswith("head/")
        if is_head and head == "reset":
            out[key] = np.zeros(shape, dtype)
            report.reinitialized[key] = "new head, zero-initialised"
            if key in params:
                used.add(key)
                report.dropped[key] = f"checkpoint head {tuple(params[key].shape)} replaced"
            continue
        if key == POSEMB and key in params:
            used.add(key)
            value = _fit_posemb(params[key], shape, tmpl, ckpt, report, grid=grid, image_size=image_size,
                                source_grid=source_grid, align_corners=align_corners)
            out[key] = leaf if value is None else value.astype(dtype)
            if value is not None:
                report.loaded.append(key)
            continue
        if key not in params:
            if is_head and head == "auto":
                out[key] = np.zeros(shape, dtype)
                report.reinitialized[key] = "the checkpoint has no head: new head, zero-initialised"
                continue
            report.missing[key] = why_missing(key, ckpt_depth, params)
            out[key] = leaf
            continue
        used.add(key)
        value = np.asarray(params[key])
        if tuple(value.shape) != shape:
            if is_head and head == "auto":
                out[key] = np.zeros(shape, dtype)
                report.reinitialized[key] = f"{explain_mismatch(key, value.shape, shape)}: new zero-initialised head"
                report.dropped[key] = "checkpoint head replaced"
                continue
            report.mismatched[key] = explain_mismatch(key, value.shape, shape)
            out[key] = leaf
            continue
        out[key] = value.astype(dtype)
        report.loaded.append(key)

    for key in params:
        if key in used:
            continue
        if key.startswith("head/") and head != "keep":
            report.dropped[key] = "checkpoint head not used (the model has no head)"
        else:
            report.unexpected[key] = why_unexpected(key, ckpt_depth, model_depth, tmpl)

    if strict and not report.ok:
        raise PretrainedLoadError(
            "checkpoint does not fit the model (pass strict=False to load what fits):\n" + report.summary(40), report)
    return unflatten(out), report


def _fit_posemb(value, shape, tmpl, ckpt: Converted, report: LoadReport, *, grid, image_size, source_grid,
                align_corners):
    """The checkpoint's position table fitted to the template's (1, T, D); None if it cannot."""
    value = np.asarray(value)
    if value.ndim == 2:
        value = value[None]
    if value.shape[-1] != shape[-1]:
        report.mismatched[POSEMB] = explain_mismatch(POSEMB, value.shape, shape) + ": width differs"
        return None
    model_prefix = 1 if "cls" in tmpl else 0
    ckpt_prefix = ckpt.posemb_prefix if ckpt.posemb_prefix is not None else 0
    if source_grid is not None:
        source_grid = tuple(int(s) for s in source_grid)
        ckpt_prefix = value.shape[1] - source_grid[0] * source_grid[1]
        if ckpt_prefix not in (0, 1):
            report.mismatched[POSEMB] = (f"checkpoint has {value.shape[1]} entries, source_grid={source_grid} "
                                         f"explains {source_grid[0] * source_grid[1]} of them")
            return None
    n_old = value.shape[1] - ckpt_prefix
    n_new = shape[1] - model_prefix
    if image_size is not None and grid is None and len(tmpl["embedding/kernel"].shape) != 4:
        # A Dense patch embedding (stem="spt") does not show the patch size: square grids only.
        side = int(round(np.sqrt(n_new)))
        if side * side != n_new:
            report.mismatched[POSEMB] = (f"the model's {n_new} patches are not a square grid and its Dense patch "
                                         "embedding does not show the patch size: pass grid=(rows, cols)")
            return None
        grid = (side, side)
    if image_size is not None and grid is None:
        ph, pw = tmpl["embedding/kernel"].shape[:2]
        stages = resnet_stages_of(tmpl)
        if stages is not None:  # a hybrid's patches are taken from the ResNet's feature map
            from jaxvision.models.resnet import resnet_stride

            ph, pw = ph * resnet_stride(stages), pw * resnet_stride(stages)
        h, w = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
        grid = (h // ph, w // pw)
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        if grid[0] * grid[1] != n_new:
            report.mismatched[POSEMB] = (f"grid {grid} has {grid[0] * grid[1]} patches, the model's position "
                                         f"embedding {n_new} (+{model_prefix} CLS)")
            return None
    patches = value[:, ckpt_prefix:]
    old = new = None  # the same number of patches and no grid given: the same grid, kept as is
    if grid is not None or n_old != n_new:
        try:
            old = source_grid or square_grid(n_old, "the checkpoint's position embedding")
            new = grid or square_grid(n_new, "the model's position embedding")
        except ValueError as err:
            report.mismatched[POSEMB] = str(err)
            return None
    if old is not None and tuple(old) != tuple(new):
        patches = resample_pos_embedding(patches, new, num_prefix=0, old_grid=old, align_corners=align_corners)
        report.adapted[POSEMB] = (f"resampled {old[0]}x{old[1]} -> {new[0]}x{new[1]} patches (bilinear, "
                                  f"{'corner' if align_corners else 'centre'}-aligned), CLS entry kept aside")
    if model_prefix:
        if ckpt_prefix:
            prefix = value[:, :1]
        else:
            prefix = np.zeros((1, 1, value.shape[-1]), value.dtype)
            report.adapted.setdefault(POSEMB, "")
            note = "zero CLS entry (the checkpoint adds position embeddings before the CLS token: exact)"
            report.adapted[POSEMB] = "; ".join(s for s in (report.adapted[POSEMB], note) if s)
        patches = np.concatenate([prefix, patches], axis=1)
    elif ckpt_prefix:
        note = "CLS entry dropped (the model has no CLS token)"
        report.adapted[POSEMB] = "; ".join(s for s in (report.adapted.get(POSEMB, ""), note) if s)
    return patches


def merge_params(fresh: Mapping, loaded: Mapping):
    """`loaded` where it holds arrays, `fresh` where it holds ShapeDtypeStructs (entries
    `load_pretrained(strict=False)` left to the model's initialisation)."""
    fresh_flat, loaded_flat = flatten(fresh), flatten(loaded)
    out = {}
    for key, value in fresh_flat.items():
        candidate = loaded_flat.get(key)
        out[key] = value if candidate is None or not hasattr(candidate, "__array__") else candidate
    return unflatten(out)
