"""Read the tensors and attributes of a TorchScript file without PyTorch.

A TorchScript file (``torch.jit.save``) is a zip archive under one top folder holding
``data.pkl`` - the module tree, pickled (protocol 2) - ``data/<key>`` - one raw
little-endian buffer per tensor storage - ``constants.pkl``, ``version`` and ``code/``
(the TorchScript source of every module's ``forward``). In ``data.pkl`` each module is
an object of a class named after its TorchScript type (``__torch__.inceptionv3.
Conv2dLayer``) whose state is a dict of its attributes, submodules and tensors; a
tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` with
the storage a persistent id ``("storage", torch.FloatStorage, key, location, numel)``.

``read_torchscript`` unpickles it with a restricted unpickler: it resolves only those
rebuild functions, storage types and ``collections.OrderedDict`` to NumPy builders here,
and ``__torch__.*`` classes to a plain attribute holder (``ScriptModule``). Any other
global (arbitrary code) is refused, so reading an untrusted file runs none of it.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ScriptModule", "TorchScriptArchive", "read_torchscript", "is_torchscript", "flat_tensors"]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class ScriptModule:
    """One TorchScript module of the tree: ``torch_type`` (its class, e.g.
    ``__torch__.inceptionv3.Conv2dLayer``) and ``attrs`` (its pickled state: ints,
    lists, ``numpy`` arrays for tensors, ``ScriptModule`` for submodules)."""

    torch_type = "?"

    def __init__(self):
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.torch_type}: module state is {type(state).__name__}, not a dict")
        self.attrs = dict(state)

    def __repr__(self):
        return f"ScriptModule({self.torch_type})"

    @property
    def short_type(self) -> str:
        """The class name without module path or TorchScript's ``___torch_mangle_N``."""
        return self.torch_type.rsplit(".", 1)[-1]

    def children(self) -> dict[str, "ScriptModule"]:
        return {k: v for k, v in self.attrs.items() if isinstance(v, ScriptModule)}

    def tensors(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.attrs.items() if isinstance(v, np.ndarray)}


@dataclasses.dataclass
class _Storage:
    dtype: Any  # the NumPy dtype of a storage type, e.g. np.float32 for torch.FloatStorage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    storage = np.asarray(storage)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"negative tensor stride {stride}")
    if 0 not in size:  # () is a scalar: one element at the offset
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise pickle.UnpicklingError(f"tensor of size {size}, stride {stride} at offset {storage_offset} "
                                         f"runs past its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], size,
                                           tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)  # a contiguous copy, independent of the archive's buffer


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _build_intlist(values):
    return list(values)


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): _build_intlist,
    ("torch.jit._pickle", "build_tensorlist"): _build_intlist,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _Storage(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._classes: dict[str, type] = {}

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (ScriptModule,), {"torch_type": qualname})
            return self._classes[qualname]
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: not a tensor, storage or TorchScript "
                                     f"module class (the reader runs no code from the file)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage, key, _location, numel = pid
        return self._read_storage(str(key), storage.dtype, int(numel))


@dataclasses.dataclass
class TorchScriptArchive:
    """What ``read_torchscript`` returns: the root ``ScriptModule`` and the ``code/``
    sources (path inside ``code/`` -> text), which say what ``forward`` computes."""

    root: ScriptModule
    code: dict[str, str]
    version: str


def is_torchscript(path) -> bool:
    """A zip archive with ``data.pkl`` and ``code/`` under one top folder (a plain
    ``torch.save`` zip has ``data.pkl`` but no ``code/``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    tops = {n.split("/", 1)[0] for n in names}
    return len(tops) == 1 and any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names) and any(
        n.split("/")[1:2] == ["code"] for n in names)


def read_torchscript(path) -> TorchScriptArchive:
    """Module tree, tensors (NumPy) and code of a TorchScript file; no PyTorch needed."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a TorchScript file (not a zip archive); "
                         f"TorchScript files are written by torch.jit.save") from None
    with zf:
        names = set(zf.namelist())
        prefixes = {n.split("/", 1)[0] for n in names}
        if len(prefixes) != 1 or f"{next(iter(prefixes))}/data.pkl" not in names:
            raise ValueError(f"{path} is not a TorchScript file: expected one top folder with data.pkl, "
                             f"found {sorted(names)[:5]}")
        prefix = next(iter(prefixes))
        byteorder = zf.read(f"{prefix}/byteorder").decode().strip() if f"{prefix}/byteorder" in names else "little"
        if byteorder != "little":
            raise ValueError(f"{path}: tensors stored {byteorder}-endian; only little-endian files are read")

        def read_storage(key, dtype, numel):
            member = f"{prefix}/data/{key}"
            if member not in names:
                raise ValueError(f"{path}: storage {key} missing from the archive (truncated file?)")
            raw = zf.read(member)
            dtype = np.dtype(dtype).newbyteorder("<")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} has {len(raw)} bytes, needs {numel * dtype.itemsize}")
            return np.frombuffer(raw, dtype=dtype, count=numel)

        root = _Unpickler(io.BytesIO(zf.read(f"{prefix}/data.pkl")), read_storage).load()
        if not isinstance(root, ScriptModule):
            raise ValueError(f"{path}: data.pkl holds {type(root).__name__}, not a TorchScript module")
        code = {n[len(prefix) + 6:]: zf.read(n).decode() for n in sorted(names)
                if n.startswith(f"{prefix}/code/") and n.endswith(".py")}
        version = zf.read(f"{prefix}/version").decode().strip() if f"{prefix}/version" in names else "?"
    return TorchScriptArchive(root=root, code=code, version=version)


def flat_tensors(module: ScriptModule, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"layers.mixed.conv.weight": array, ...}``: the dotted names ``state_dict()``
    of the loaded TorchScript module would give."""
    out = {f"{prefix}{k}": v for k, v in module.tensors().items()}
    for name, child in module.children().items():
        out.update(flat_tensors(child, f"{prefix}{name}."))
    return out
