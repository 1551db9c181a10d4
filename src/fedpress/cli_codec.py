"""``fedpress compress`` / ``decompress`` / ``codecs``: the codec layer from the shell.

A directory laid out as ``client_<id>/round_<r>.safetensors`` is coded as one stream per client,
rounds in order, so stateful codecs see the rounds as they would in training.

These commands never import torch: safetensors files are read and written here with numpy
(bfloat16 widened to float32 exactly), and the compiled ``fast`` codec loads numba only when used.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from .codec.base import available_codecs, codec_parameters
from .codec.errors import CodecError, StreamStateError
from .codec.routing import Policy
from .codec.stream import StreamDecoder, StreamEncoder, TaggedArray
from .codec.wire import parse_manifest

_ROUND = re.compile(r"round_(\d+)$")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _order_key(rel: Path) -> tuple:
    m = _ROUND.match(rel.stem)
    return (str(rel.parent), int(m.group(1)) if m else -1, rel.name)


def plan(src: Path, suffix: str) -> dict[str, list[Path]]:
    """Relative input paths grouped into streams (one per directory), each in round order."""
    if src.is_file():
        return {"": [Path(src.name)]}
    if not src.is_dir():
        raise CliError(f"{src}: no such file or directory")
    files = sorted((p.relative_to(src) for p in src.rglob(f"*{suffix}")), key=_order_key)
    if not files:
        raise CliError(f"{src}: no {suffix} files found")
    groups: dict[str, list[Path]] = defaultdict(list)
    for rel in files:
        groups[str(rel.parent)].append(rel)
    return dict(groups)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fedpress-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------ safetensors without torch
#: safetensors dtype names <-> numpy; BF16 is widened to float32 exactly (numpy has no bfloat16).
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_MAX_ST_HEADER = 100 * 1024 * 1024


def _load_safetensors(path: Path) -> dict[str, object]:
    """Tensors of a ``.safetensors`` file as numpy arrays (``TaggedArray`` for bfloat16).

    Parsed here (the format is an 8-byte length, a JSON header and the raw little-endian data),
    so the codec commands need neither torch nor a numpy bfloat16 type; every offset is checked.
    """
    try:
        # a writable buffer: the arrays below are views into it, and compiled kernels (numba)
        # are specialised once for writable arrays, as they get them from everywhere else
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data):
                raise OSError("file changed while being read")
    except OSError as exc:
        raise CliError(f"{path}: cannot read safetensors ({exc.strerror or exc})") from None
    bad = f"{path}: cannot read safetensors"
    if len(data) < 8:
        raise CliError(f"{bad} (file is {len(data)} bytes)")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if hlen > min(len(data) - 8, _MAX_ST_HEADER):
        raise CliError(f"{bad} (header length {hlen} is out of range)")
    try:
        header = json.loads(data[8 : 8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{bad} (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CliError(f"{bad} (header is not a JSON object)")
    body = memoryview(data)[8 + hlen :]
    out: dict[str, object] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            st_dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(d) for d in shape)
            ok = all(d >= 0 for d in shape) and 0 <= start <= end <= len(body)
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            raise CliError(f"{bad} (entry {name!r} is malformed)")
        if st_dtype == "BF16":
            if end - start != 2 * math.prod(shape):
                raise CliError(f"{bad} (entry {name!r} has the wrong size)")
            raw = np.frombuffer(body[start:end], dtype="<u2").astype(np.uint32) << 16
            out[name] = TaggedArray(raw.view(np.float32).reshape(shape), "bfloat16")
            continue
        if st_dtype not in _ST_DTYPES:
            raise CliError(f"{bad} (entry {name!r} has unsupported dtype {st_dtype})")
        dtype = np.dtype(_ST_DTYPES[st_dtype]).newbyteorder("<")
        if end - start != dtype.itemsize * math.prod(shape):
            raise CliError(f"{bad} (entry {name!r} has the wrong size)")
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
    return out


def _save_safetensors(
    tensors: dict[str, np.ndarray], dtypes: dict[str, str], lossy: set[str], path: str
) -> None:
    """Write the decoded tensors. A bfloat16 tensor that went through a lossy codec is written as
    float32: its reconstruction is within the bound in float32, and rounding it back to
    bfloat16 (8 mantissa bits) could break the bound. Exact bfloat16 tensors go back as BF16."""
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        a = np.asarray(value)  # (ascontiguousarray would turn a 0-d tensor into 1-d)
        if dtypes.get(name) == "bfloat16" and name not in lossy:
            # exact: the float32 values are widened bfloat16s, so the top halves are the bytes
            raw = (a.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
            st = "BF16"
        else:
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            st = _ST_NAMES[a.dtype.name]
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def _output_path(src: Path, dst: Path, rel: Path, suffix: str) -> Path:
    if src.is_file() and (dst.suffix == suffix or not dst.is_dir()) and dst.suffix:
        return dst
    return dst / rel.with_suffix(suffix)


def _policy_nonfinite(policy: Policy, nonfinite: str | None) -> Policy:
    if nonfinite is None:
        return policy
    if nonfinite not in NONFINITE_CHOICES:
        raise CliError(f"--nonfinite must be one of {', '.join(NONFINITE_CHOICES)}, got {nonfinite!r}")
    return Policy(policy.rules, nonfinite=nonfinite)


#: what ``compress`` does with NaN/Inf headed for a lossy codec.
NONFINITE_CHOICES = ("refuse", "lossless")


def compress(
    src: Path,
    dst: Path,
    policy: Policy,
    keyframe_interval: int | None = None,
    nonfinite: str | None = None,
) -> dict:
    """Encode every safetensors file under ``src``; returns byte counts.

    ``nonfinite``: ``"refuse"`` (a tensor holding NaN/Inf routed to a lossy codec is an error)
    or ``"lossless"`` (such a tensor is sent exactly, with a warning); ``None`` keeps the
    policy's own setting.
    """
    policy = _policy_nonfinite(policy, nonfinite)
    raw = enc = 0
    for group, rels in plan(src, ".safetensors").items():
        stream = StreamEncoder(policy, stream_id=group or "default", keyframe_interval=keyframe_interval)
        for rel in rels:
            path = src if src.is_file() else src / rel
            try:
                payload = stream.encode(_load_safetensors(path), meta={"source": str(rel)})
            except CodecError as exc:
                raise CliError(f"{path}: {exc}") from None
            out = _output_path(src, dst, rel, ".fpz")
            _atomic_write(out, lambda p, data=payload: Path(p).write_bytes(data))
            raw += stream.last_stats.raw_bytes
            enc += len(payload)
    return {"raw_bytes": raw, "encoded_bytes": enc, "ratio": raw / max(enc, 1)}


def _dependency_hint(path: Path, payload: bytes, single_file: bool) -> str | None:
    """Advice for a payload that needs the earlier rounds of its stream, or None."""
    try:
        env = parse_manifest(payload)
    except CodecError:
        return None
    s = env.stream
    if s is None or s.get("keyframe"):
        return None
    where = "the directory that holds its earlier rounds" if single_file else "a directory holding every round"
    return (
        f"{path}: round {s['seq']} of stream {s['id']!r} depends on the state of the earlier "
        f"rounds of its stream and cannot be decoded on its own; decompress {where} "
        "(fedpress decompress DIR OUT), or compress with --keyframe-interval 1 so that every "
        "file decodes alone"
    )


def decompress(src: Path, dst: Path) -> int:
    """Decode every .fpz under ``src`` (streams per directory, rounds in order).

    All or nothing: outputs go to a temporary directory next to ``dst`` and are moved into place
    only after every payload decoded, so a failure leaves nothing behind.
    """
    groups = plan(src, ".fpz")
    single = src.is_file()
    final = [(rel, _output_path(src, dst, rel, ".safetensors")) for rels in groups.values()
             for rel in rels]
    anchor = final[0][1].parent if single else dst.parent
    anchor.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=anchor, prefix=".fedpress-"))
    try:
        count = 0
        for _group, rels in groups.items():
            decoder = StreamDecoder()
            for rel in rels:
                path = src if single else src / rel
                try:
                    payload = path.read_bytes()
                    tensors = decoder.decode(payload)
                except StreamStateError as exc:
                    hint = _dependency_hint(path, payload, single)
                    raise CliError(hint or f"{path}: {exc}") from None
                except CodecError as exc:
                    raise CliError(f"{path}: {exc}") from None
                except OSError as exc:
                    raise CliError(f"{path}: {exc.strerror or exc}") from None
                staged = tmp / f"{count}.safetensors"
                _save_safetensors(tensors, decoder.last_dtypes, decoder.last_lossy, str(staged))
                count += 1
        for i, (_rel, out) in enumerate(final):
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f"{i}.safetensors", out)
        return count
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe_codecs() -> str:
    lines = []
    for name, cls in available_codecs().items():
        params = ", ".join(f"{k}={v!r}" for k, v in codec_parameters(cls).items())
        kind = "stateful " if cls.stateful else ""
        kind += "pointwise-bounded" if cls.pointwise_bound else ("lossy" if cls.lossy else "lossless")
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"{name:12s} [{kind}] {params}\n{'':12s} {doc}")
    return "\n".join(lines)
