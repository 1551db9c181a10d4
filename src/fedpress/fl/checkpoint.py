"""Checkpoint state as arrays plus plain data, so it can be saved without pickle.

``Server.state_dict()`` returns nested dicts/lists of numpy arrays, numbers, strings, booleans
and ``None``. :func:`split_arrays` turns that into ``(arrays, skeleton)``: a flat
``name -> array`` dict (for safetensors) and a JSON/msgpack-safe skeleton in which each array
is ``{"__array__": name}`` and each tuple ``{"__tuple__": [...]}`` (tuples matter: codec stream
states hash their shapes). :func:`join_arrays` is the inverse. Nothing here executes code from
the saved bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_ARRAY = "__array__"
_TUPLE = "__tuple__"


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A generator's state with its 128-bit integers as decimal strings (msgpack-safe)."""
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {k: str(v) for k, v in st["state"].items()},
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def load_rng_state(rng: np.random.Generator, sd: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (same bit generator kind)."""
    if sd["bit_generator"] != rng.bit_generator.state["bit_generator"]:
        raise ValueError(f"checkpoint RNG is {sd['bit_generator']}, this server uses "
                         f"{rng.bit_generator.state['bit_generator']}")
    rng.bit_generator.state = {
        "bit_generator": sd["bit_generator"],
        "state": {k: int(v) for k, v in sd["state"].items()},
        "has_uint32": int(sd["has_uint32"]),
        "uinteger": int(sd["uinteger"]),
    }


def split_arrays(state: Any) -> tuple[dict[str, np.ndarray], Any]:
    """``(arrays, skeleton)``: every array of ``state`` by path, and the rest as plain data."""
    arrays: dict[str, np.ndarray] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, np.ndarray):
            arrays[path] = np.ascontiguousarray(x)
            return {_ARRAY: path}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise TypeError(f"checkpoint key {k!r} at {path or '/'} is not a string")
                out[k] = walk(v, f"{path}/{k}")
            return out
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str, bytes)):
            return x
        raise TypeError(f"checkpoint value at {path or '/'} has type {type(x).__name__}")

    return arrays, walk(state, "")


def join_arrays(arrays: dict[str, np.ndarray], skeleton: Any) -> Any:
    """Inverse of :func:`split_arrays`; a missing array is a clear ``KeyError``."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {_ARRAY}:
                name = x[_ARRAY]
                if name not in arrays:
                    raise KeyError(f"checkpoint array {name!r} is missing")
                return np.asarray(arrays[name])
            if set(x) == {_TUPLE}:
                return tuple(walk(v) for v in x[_TUPLE])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


def copy_tensors(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Independent copies (a checkpoint must not alias live state)."""
    return {k: np.array(v, copy=True) for k, v in t.items()}
