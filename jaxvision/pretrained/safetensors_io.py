"""Read and write ``.safetensors`` files as NumPy arrays.

Uses the `safetensors` package's NumPy API when it is installed; otherwise a small
reader/writer of the documented format (an 8-byte little-endian header length, a JSON
header of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian bytes),
so neither PyTorch nor `safetensors` is a dependency.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["read_safetensors", "write_safetensors"]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file; bfloat16 ones as float32."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        return _read(Path(path))
    try:
        return load_file(str(path))
    except (TypeError, ValueError):  # e.g. bfloat16, which NumPy lacks: read it ourselves
        return _read(Path(path))


def _read(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path} is not a .safetensors file (too short)")
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a .safetensors file (bad header: {err})") from None
    body = memoryview(data)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        if info["dtype"] == "BF16":
            import ml_dtypes

            array = np.frombuffer(raw, dtype=ml_dtypes.bfloat16).astype(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        out[name] = array.reshape(info["shape"]).astype(array.dtype.newbyteorder("="))
    return out


def write_safetensors(tensors: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    try:
        from safetensors.numpy import save_file
    except ImportError:
        _write(arrays, Path(path), metadata)
    else:
        save_file(arrays, str(path), metadata=dict(metadata) if metadata else None)


def _write(arrays: Mapping[str, np.ndarray], path: Path, metadata) -> None:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset, chunks = 0, []
    for name in sorted(arrays):
        array = arrays[name]
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written to .safetensors")
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in chunks:
            f.write(raw)
