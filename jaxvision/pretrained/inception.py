"""pytorch-fid's FID-Inception weights for ``jaxvision.models.inception.FIDInceptionV3``.

Nothing is downloaded here, ever. The user fetches pytorch-fid's weight file once,
converts it to an ``.npz`` (a command; reading the ``.pth`` needs PyTorch, CPU build
is enough, no GPU) and from then on only NumPy reads it:

    # pytorch-fid's GitHub release "fid_weights":
    #   https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m jaxvision.pretrained.inception_convert pt_inception-2015-12-05-6726825d.pth

writes ``~/.cache/jaxvision/fid_inception_v3.npz`` (``$JAXVISION_CACHE_DIR`` moves the
folder; ``$JAXVISION_FID_WEIGHTS`` or ``--weights`` names another file).

The ``.npz`` holds flat keys ``"params/Mixed_5b/branch1x1/conv/kernel"``,
``"batch_stats/Mixed_5b/branch1x1/bn/mean"``, ... (the flax variables of
``FIDInceptionV3``) and ``__format__`` / ``__source_sha256__`` strings.

Also here, for parity tests and benchmarks: ``random_state_dict(seed)``, the documented
deterministic rule for random FID-Inception weights in pytorch-fid's naming.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

FORMAT = "jaxvision-fid-inception-v1"
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
# torch-hub convention: the hex in the file name is the start of its sha256.
WEIGHTS_SHA256_PREFIX = "6726825d"


def cache_dir() -> Path:
    """``$JAXVISION_CACHE_DIR``, else ``~/.cache/jaxvision``."""
    return Path(os.environ.get("JAXVISION_CACHE_DIR") or Path.home() / ".cache" / "jaxvision")


def default_weights_path() -> Path:
    """``$JAXVISION_FID_WEIGHTS``, else ``<cache_dir>/fid_inception_v3.npz``."""
    env = os.environ.get("JAXVISION_FID_WEIGHTS")
    return Path(env) if env else cache_dir() / "fid_inception_v3.npz"


class WeightsNotFoundError(FileNotFoundError):
    pass


def missing_weights_message(path) -> str:
    return (
        f"FID-Inception weights not found at {path}.\n"
        f"jaxvision never downloads them. Get pytorch-fid's weight file {WEIGHTS_FILENAME} from the "
        f"pytorch-fid GitHub release 'fid_weights':\n    {WEIGHTS_URL}\n"
        f"and convert it once (needs PyTorch, CPU build is enough; no GPU):\n"
        f"    python -m jaxvision.pretrained.inception_convert {WEIGHTS_FILENAME} {default_weights_path()}\n"
        f"then pass --weights / weights_path=, or set $JAXVISION_FID_WEIGHTS, if you wrote it elsewhere."
    )


# --- names: pytorch-fid state dict <-> flax variables ------------------------------------------

@functools.lru_cache(maxsize=1)
def _variable_shapes() -> dict:
    """{(collection, *path): shape} of FIDInceptionV3's variables (abstract: no compute)."""
    import jax
    import jax.numpy as jnp

    from jaxvision.models.inception import FIDInceptionV3

    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def convert_pth_to_npz(pth_path, npz_path) -> Path:
    digest = file_sha256(pth_path)
    check_sha256_from_name(pth_path, digest)
    variables = convert_state_dict(read_pth(pth_path))
    npz_path = Path(npz_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz_path.with_name(npz_path.name + ".tmp.npz")
    np.savez(tmp, __format__=np.array(FORMAT), __source_sha256__=np.array(digest),
             **flatten_variables(variables))
    os.replace(tmp, npz_path)
    return npz_path


def load_variables(path=None) -> dict:
    """FID-Inception variables from our ``.npz`` (or, with PyTorch installed, straight
    from pytorch-fid's ``.pth``). Default path: ``default_weights_path()``. A missing file
    raises ``WeightsNotFoundError`` saying where to get it and how to convert it."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise WeightsNotFoundError(missing_weights_message(path))
    if path.suffix == ".pth":
        digest = file_sha256(path)
        check_sha256_from_name(path, digest)
        return convert_state_dict(read_pth(path))
    with np.load(path, allow_pickle=False) as f:
        fmt = str(f["__format__"]) if "__format__" in f.files else None
        if fmt != FORMAT:
            raise ValueError(f"{path} is not a converted FID-Inception file (format {fmt!r}, expected "
                             f"{FORMAT!r}); convert {WEIGHTS_FILENAME} with "
                             f"python -m jaxvision.pretrained.inception_convert")
        flat = {k: f[k] for k in f.files if not k.startswith("__")}
    variables = unflatten_variables(flat)
    expected = {"/".join(k): s for k, s in _variable_shapes().items()}
    got = {k: v.shape for k, v in flat.items()}
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

def fid_inception(weights_path=None, *, variables=None, precision="highest", dtype=None):
    """``jaxvision.metrics.fid.FeatureNet`` running FID-Inception with the given weights
    (``variables`` wins over ``weights_path``; default: ``default_weights_path()``).
    Its ``name`` carries a fingerprint of the weights (FID cache keys use it)."""
    import jax
    import jax.numpy as jnp

    from jaxvision.metrics.fid import FeatureNet
    from jaxvision.models.inception import FIDInceptionV3

    if variables is None:
        variables = load_variables(weights_path)
    model = FIDInceptionV3(precision=precision, dtype=dtype or jnp.float32)
    name = f"fid-inception-v3:{fingerprint(variables)}"
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        name += f":{jnp.dtype(dtype).name}"
    if precision != "highest":
        name += f":precision={precision}"
    return FeatureNet(apply=model.apply, variables=jax.device_put(variables), name=name, input_size=299)
