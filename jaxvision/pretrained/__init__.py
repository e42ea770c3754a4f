"""Checkpoint import/export: official vision_transformer/AugReg and big_vision ``.npz``,
timm/PyTorch state dicts (``.safetensors`` without PyTorch, ``.pth`` with it).

    from jaxvision.pretrained import load_pretrained
    params, report = load_pretrained("ViT-B_16.npz", template, head="reset")

See `jaxvision.pretrained.load` for the full contract, `resample` for position
embeddings at a new resolution, `timm` for export to timm (`save_timm`, `to_timm`).
Only NumPy is needed here; PyTorch is imported only to read or write ``.pth`` files.
"""

from jaxvision.pretrained.load import (  # noqa: F401
    FORMATS,
    LoadReport,
    PretrainedLoadError,
    detect_format,
    infer_vit_config,
    load_pretrained,
    merge_params,
    read_checkpoint,
)
from jaxvision.pretrained.npz import save_npz  # noqa: F401
from jaxvision.pretrained.resample import resample_pos_embedding  # noqa: F401
from jaxvision.pretrained.timm import from_timm, save_timm, timm_kwargs, to_timm  # noqa: F401
