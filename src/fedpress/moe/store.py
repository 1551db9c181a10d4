"""The expert store: every expert compressed once, kept in host memory or a memory-mapped file.

Why a store apart from the cache: compression happens once (at build), decompression on every
cache miss. The store holds the bytes that would otherwise sit in host RAM or on disk
uncompressed, chooses the codec per layer group (shallow / middle / deep) or per layer, and
answers ``payload(layer, expert)`` with a zero-copy view. Every payload carries CRC32s (wire
format) and names its (layer, expert), so a corrupted or misplaced expert is refused, never used.

On disk: ``experts.bin`` (the payloads back to back) and ``index.json`` (offsets, lengths, codecs).
"""

from __future__ import annotations

import json
import mmap
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpress.codec.errors import PayloadError

from .layout import layer_group
from .weight_codec import CodecSpec, DecodeTiming, decode_expert, encode_expert

INDEX_VERSION = 1


class CorruptExpertError(PayloadError):
    """A stored expert failed its checksum or names another (layer, expert)."""


@dataclass
class CodecPlan:
    """Which codec each MoE layer's experts get: per layer, else per group, else the default.

    Parameters
    ----------
    default:
        Codec for layers that no other entry names.
    groups:
        ``{"shallow" | "middle" | "deep": codec}``; groups are thirds of the MoE layers.
    layers:
        ``{decoder layer index: codec}``; wins over groups.
    """

    default: CodecSpec
    groups: dict[str, CodecSpec] = field(default_factory=dict)
    layers: dict[int, CodecSpec] = field(default_factory=dict)

    @classmethod
    def parse(cls, cfg: str | Mapping[str, Any]) -> CodecPlan:
        """From a codec string, a plan string ``default;group=codec;...`` (e.g.
        ``fast:eb=0.003;middle=fast:eb=0.001``), or ``{default, shallow, middle, deep, layers}``."""
        if isinstance(cfg, str) and ";" in cfg:
            head, *rest = (part.strip() for part in cfg.split(";"))
            d: dict[str, Any] = {"default": head}
            for part in rest:
                group, eq, spec = part.partition("=")
                if not eq or group.strip() not in ("shallow", "middle", "deep"):
                    raise ValueError(f"codec plan part {part!r} is not shallow|middle|deep=codec")
                d[group.strip()] = spec.strip()
            return cls.parse(d)
        if isinstance(cfg, str):
            return cls(CodecSpec.parse(cfg))
        cfg = dict(cfg)
        unknown = set(cfg) - {"default", "shallow", "middle", "deep", "layers"}
        if unknown:
            raise ValueError(f"codec plan has unknown key(s) {sorted(unknown)}")
        return cls(
            CodecSpec.parse(cfg.get("default", "raw")),
            {g: CodecSpec.parse(cfg[g]) for g in ("shallow", "middle", "deep") if cfg.get(g)},
            {int(k): CodecSpec.parse(v) for k, v in (cfg.get("layers") or {}).items()},
        )

    def spec_for(self, layer: int, position: int, count: int) -> CodecSpec:
        if layer in self.layers:
            return self.layers[layer]
        return self.groups.get(layer_group(position, count), self.default)


@dataclass
class Entry:
    layer: int
    expert: int
    offset: int
    length: int
    raw_bytes: int


class ExpertStore:
    """Compressed experts, addressed by (decoder layer index, expert id)."""

    def __init__(self, entries: dict[tuple[int, int], Entry], codecs: dict[int, str],
                 data: bytes | mmap.mmap, path: Path | None = None, encode_s: float = 0.0) -> None:
        self.entries, self.codecs, self._data, self.path = entries, codecs, data, path
        self._view = memoryview(data)
        self.encode_s = encode_s

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        experts: Iterable[tuple[int, int, dict[str, np.ndarray]]],
        plan: CodecPlan,
        layer_indices: list[int],
        path: str | Path | None = None,
    ) -> ExpertStore:
        """Encode every expert; write ``path/experts.bin`` + ``index.json`` when a path is given."""
        position = {li: p for p, li in enumerate(layer_indices)}
        entries: dict[tuple[int, int], Entry] = {}
        codecs: dict[int, str] = {}
        chunks: list[bytes] = []
        offset = 0
        t0 = time.perf_counter()
        for layer, e, tensors in experts:
            spec = plan.spec_for(layer, position[layer], len(layer_indices))
            codecs[layer] = str(spec)
            payload = encode_expert(tensors, spec, meta={"layer": layer, "expert": e})
            raw = sum(a.size * 4 for a in tensors.values())
            entries[(layer, e)] = Entry(layer, e, offset, len(payload), raw)
            chunks.append(payload)
            offset += len(payload)
        encode_s = time.perf_counter() - t0
        blob = b"".join(chunks)
        if path is None:
            return cls(entries, codecs, blob, encode_s=encode_s)
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "experts.bin").write_bytes(blob)
        index = {
            "version": INDEX_VERSION,
            "codecs": {str(k): v for k, v in codecs.items()},
            "entries": [[x.layer, x.expert, x.offset, x.length, x.raw_bytes] for x in entries.values()],
            "encode_s": encode_s,
        }
        (root / "index.json").write_text(json.dumps(index))
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path) -> ExpertStore:
        """Memory-map a store written by ``build``; payloads are read only when used."""
        root = Path(path)
        try:
            index = json.loads((root / "index.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} holds no expert store (index.json missing)") from None
        if index.get("version") != INDEX_VERSION:
            raise ValueError(f"expert store {root} has index version {index.get('version')}")
        entries = {(a, b): Entry(a, b, o, n, r) for a, b, o, n, r in index["entries"]}
        size = (root / "experts.bin").stat().st_size
        if any(x.offset + x.length > size for x in entries.values()):
            raise CorruptExpertError(f"expert store {root}: experts.bin is truncated")
        with open(root / "experts.bin", "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        return cls(entries, {int(k): v for k, v in index["codecs"].items()}, data, root,
                   index.get("encode_s", 0.0))

    # ------------------------------------------------------------------ read
    def payload(self, layer: int, expert: int) -> memoryview:
        x = self.entries[(layer, expert)]
        return self._view[x.offset : x.offset + x.length]

    def load(self, layer: int, expert: int, device: Any = "cpu") -> tuple[dict[str, Any], DecodeTiming, int]:
        """Decode one expert onto ``device``; returns (tensors, timing, bytes read from the store)."""
        buf = self.payload(layer, expert)
        try:
            tensors, timing = decode_expert(buf, device, {"layer": layer, "expert": expert})
        except PayloadError as exc:
            raise CorruptExpertError(f"stored expert (layer {layer}, expert {expert}) is corrupted: {exc}") from None
        return tensors, timing, len(buf)

    @property
    def stored_bytes(self) -> int:
        return sum(x.length for x in self.entries.values())

    @property
    def raw_bytes(self) -> int:
        return sum(x.raw_bytes for x in self.entries.values())

    def expert_raw_bytes(self) -> int:
        """Decoded size of one expert (the largest), the unit of the cache budget."""
        return max(x.raw_bytes for x in self.entries.values())

    def close(self) -> None:
        self._view.release()
        if isinstance(self._data, mmap.mmap):
            self._data.close()
