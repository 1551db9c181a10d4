"""Atomic checkpoints of plain state (nested dicts/lists of numbers, strings and numpy arrays).

One file, written as ``<name>.tmp`` + fsync + rename + fsync of the directory, so a crash leaves
either the old checkpoint or the new one, never a torn file. Arrays go to a safetensors blob,
the structure to JSON with tags for what JSON lacks (int dict keys, tuples, bytes, arrays);
loading never unpickles anything.

File layout: ``FPCK`` | u64 JSON length | JSON | safetensors bytes.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

MAGIC = b"FPCK"
_LEN = struct.Struct("<Q")


class CheckpointError(ValueError):
    """A checkpoint file is missing, torn or holds something this format cannot store."""


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError("object arrays cannot be checkpointed")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return {"__set__": [_encode(v, arrays) for v in sorted(obj)]}
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _decode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return arrays[obj["__array__"]]
    if "__items__" in obj:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if "__set__" in obj:
        return {_decode(v, arrays) for v in obj["__set__"]}
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    return {k: _decode(v, arrays) for k, v in obj.items()}


def dumps(state: Any) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_encode(state, arrays), allow_nan=True).encode()
    blob = st_save(arrays) if arrays else b""
    return MAGIC + _LEN.pack(len(tree)) + tree + blob


def loads(data: bytes) -> Any:
    if len(data) < 12 or data[:4] != MAGIC:
        raise CheckpointError("not a fedpress checkpoint (bad magic bytes)")
    (n,) = _LEN.unpack_from(data, 4)
    if 12 + n > len(data):
        raise CheckpointError("checkpoint is truncated")
    try:
        tree = json.loads(data[12 : 12 + n])
        arrays = st_load(bytes(data[12 + n :])) if len(data) > 12 + n else {}
    except Exception as exc:  # json and safetensors raise several types on damage
        raise CheckpointError(f"checkpoint is damaged ({exc})") from None
    return _decode(tree, arrays)


def save(path: str | Path, state: Any) -> None:
    """Write ``state`` to ``path`` atomically and durably."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    data = dumps(state)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    return loads(p.read_bytes())
