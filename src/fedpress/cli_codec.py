"""``fedpress compress`` / ``decompress`` / ``codecs``: the codec layer from the shell.

A directory laid out as ``client_<id>/round_<r>.safetensors`` is coded as one stream per client,
rounds in order, so stateful codecs see the rounds as they would in training.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from .codec.base import available_codecs, codec_parameters
from .codec.errors import CodecError
from .codec.routing import Policy
from .codec.stream import StreamDecoder, StreamEncoder

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


def _load_safetensors(path: Path) -> dict[str, object]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CliError(f"{path}: cannot read safetensors ({exc})") from None


def _save_safetensors(
    tensors: dict[str, np.ndarray], dtypes: dict[str, str], lossy: set[str], path: str
) -> None:
    """Write the decoded tensors. A bfloat16 tensor that went through a lossy codec is written as
    float32: its reconstruction is within the bound in float32, and rounding it back to
    bfloat16 (8 mantissa bits) could break the bound."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for k, v in tensors.items():
        t = torch.from_numpy(np.array(v, order="C", copy=True))
        exact_bf16 = dtypes.get(k) == "bfloat16" and k not in lossy
        out[k] = t.to(torch.bfloat16) if exact_bf16 else t
    save_file(out, path)


def _output_path(src: Path, dst: Path, rel: Path, suffix: str) -> Path:
    if src.is_file() and (dst.suffix == suffix or not dst.is_dir()) and dst.suffix:
        return dst
    return dst / rel.with_suffix(suffix)


def compress(src: Path, dst: Path, policy: Policy, keyframe_interval: int | None = None) -> dict:
    """Encode every safetensors file under ``src``; returns byte counts."""
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


def decompress(src: Path, dst: Path) -> int:
    """Decode every .fpz under ``src`` (streams per directory, rounds in order)."""
    count = 0
    for _group, rels in plan(src, ".fpz").items():
        decoder = StreamDecoder()
        for rel in rels:
            path = src if src.is_file() else src / rel
            try:
                tensors = decoder.decode(path.read_bytes())
            except CodecError as exc:
                raise CliError(f"{path}: {exc}") from None
            except OSError as exc:
                raise CliError(f"{path}: {exc.strerror or exc}") from None
            out = _output_path(src, dst, rel, ".safetensors")
            dtypes, lossy = decoder.last_dtypes, decoder.last_lossy
            _atomic_write(
                out, lambda p, t=tensors, d=dtypes, lo=lossy: _save_safetensors(t, d, lo, p)
            )
            count += 1
    return count


def describe_codecs() -> str:
    lines = []
    for name, cls in available_codecs().items():
        params = ", ".join(f"{k}={v!r}" for k, v in codec_parameters(cls).items())
        kind = "stateful " if cls.stateful else ""
        kind += "pointwise-bounded" if cls.pointwise_bound else ("lossy" if cls.lossy else "lossless")
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"{name:12s} [{kind}] {params}\n{'':12s} {doc}")
    return "\n".join(lines)
