"""An honest virtual clock for codecs: each codec costs what it measurably costs here.

``timing="modeled"`` charges ``raw_bytes / throughput`` with the throughput of *that* codec
(per codec, mode, bound and dtype), measured once on this machine on a representative tensor and
cached in ``~/.cache/fedpress/codec_speed.json`` (``$FEDPRESS_CACHE_DIR`` overrides the folder)
under a key made of the machine and the library versions. ``none``/raw costs nothing. The table
is read once before a run, so a run stays deterministic for a seed; tests inject throughputs.
``timing="measured"`` charges the wall seconds the codec took where known (client side) and the
modeled seconds where not (the server side, which the transport cannot time).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .codec_adapter import CodecSpec, make_decoder, make_encoder

#: shape of the calibration tensor (1 MiB of float32, routed to the lossy codec)
CALIBRATION_SHAPE = (512, 512)
CALIBRATION_REPEATS = 3


@dataclass(frozen=True)
class CodecSpeed:
    """Throughput of one codec setting in MB/s (1e6 bytes of raw tensor data per second)."""

    encode_mb_s: float
    decode_mb_s: float

    def __post_init__(self) -> None:
        if not (self.encode_mb_s > 0 and self.decode_mb_s > 0):
            raise ValueError(f"codec throughputs must be > 0, got {self}")


@dataclass(frozen=True)
class TimingModel:
    """Codec seconds on the virtual clock for the uplink (``up``) and downlink (``down``).

    A link whose speed is ``None`` is raw: its codec costs nothing.
    """

    mode: str = "modeled"
    up: CodecSpeed | None = None
    down: CodecSpeed | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("modeled", "measured"):
            raise ValueError(f"timing must be 'modeled' or 'measured', got {self.mode!r}")
        if isinstance(self.up, (int, float)):
            # older callers: TimingModel(mode, codec_mb_per_s) = one throughput for both links
            fixed = CodecSpeed(float(self.up), float(self.up))
            object.__setattr__(self, "up", fixed)
            object.__setattr__(self, "down", fixed)

    def modeled_seconds(self, link: str, op: str, raw_bytes: int) -> float:
        """``raw_bytes`` over the link codec's calibrated throughput for ``op``."""
        if link not in ("up", "down") or op not in ("encode", "decode"):
            raise ValueError(f"unknown codec operation {link}/{op}")
        speed = self.up if link == "up" else self.down
        if speed is None:
            return 0.0
        mb_s = speed.encode_mb_s if op == "encode" else speed.decode_mb_s
        return raw_bytes / (mb_s * 1e6)

    def codec_seconds(self, link: str, op: str, raw_bytes: int, measured_s: float | None = None) -> float:
        """Seconds charged for one codec operation (see the module docstring)."""
        if self.mode == "measured" and measured_s is not None:
            return float(measured_s)
        return self.modeled_seconds(link, op, raw_bytes)

    @classmethod
    def for_links(
        cls,
        mode: str,
        up: CodecSpec | None,
        down: CodecSpec | None,
        fixed_mb_s: float | None = None,
        cache: Path | None = None,
    ) -> TimingModel:
        """The model of a run: calibrated (or cached) speeds of its two links' codecs;
        ``fixed_mb_s`` charges every non-raw codec one throughput instead (tests, comparisons)."""

        def speed(spec: CodecSpec | None) -> CodecSpeed | None:
            if spec is None or spec.is_raw:
                return None
            if fixed_mb_s is not None:
                return CodecSpeed(fixed_mb_s, fixed_mb_s)
            return codec_speed(spec, cache=cache)

        return cls(mode, speed(up), speed(down))


def cache_path() -> Path:
    """Where calibrated throughputs are kept."""
    root = os.environ.get("FEDPRESS_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "fedpress"
    return base / "codec_speed.json"


def machine_key() -> str:
    """Machine and library versions: a throughput measured elsewhere is not reused."""
    from fedpress.bench.machine import cpu_model

    parts = [platform.node(), platform.machine(), cpu_model(), str(os.cpu_count()), platform.python_version()]
    for pkg in ("fedpress", "numpy", "pysz", "zfpy", "zstandard", "numba", "constriction"):
        try:
            parts.append(f"{pkg}={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{pkg}=-")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


#: bumped when the calibration method changes, so older cached numbers are not reused
CALIBRATION_VERSION = 2


def _setting_key(spec: CodecSpec, dtype: str) -> str:
    return f"v{CALIBRATION_VERSION}/{spec.name}/{spec.mode}/{spec.eb:g}/{dtype}"


def calibrate(spec: CodecSpec, dtype: str = "float32", seed: int = 0) -> CodecSpeed:
    """Measure encode/decode throughput of ``spec`` on an update-like tensor (best of a few
    payloads on one stream after a warm-up, so JIT start-up is not charged to every run).

    Time is the process's CPU time, not wall time: on a shared, loaded machine wall time
    counts the time other processes held the CPU, which is not the codec's cost (for a
    single-threaded codec the two agree on an idle machine)."""
    rng = np.random.default_rng(seed)
    shape = CALIBRATION_SHAPE
    xs = [{"layer.weight": (rng.standard_normal(shape) * 1e-3).astype(dtype)}
          for _ in range(CALIBRATION_REPEATS + 1)]
    enc = make_encoder(spec, "calibrate/up")
    dec = make_decoder(spec)
    enc_s, dec_s = [], []
    for x in xs:
        t0 = time.process_time()
        payload = enc.encode(x)
        t1 = time.process_time()
        dec.decode(payload)
        t2 = time.process_time()
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
    raw = xs[0]["layer.weight"].nbytes
    return CodecSpeed(raw / max(min(enc_s[1:]), 1e-9) / 1e6, raw / max(min(dec_s[1:]), 1e-9) / 1e6)


def codec_speed(spec: CodecSpec, dtype: str = "float32", cache: Path | None = None) -> CodecSpeed:
    """The cached throughput of ``spec`` on this machine, calibrating (and caching) on a miss."""
    path = cache or cache_path()
    mkey, skey = machine_key(), _setting_key(spec, dtype)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    hit = table.get(mkey, {}).get(skey)
    if isinstance(hit, dict):
        try:
            return CodecSpeed(float(hit["encode_mb_s"]), float(hit["decode_mb_s"]))
        except (KeyError, TypeError, ValueError):
            pass
    speed = calibrate(spec, dtype)
    table.setdefault(mkey, {})[skey] = {"encode_mb_s": speed.encode_mb_s,
                                        "decode_mb_s": speed.decode_mb_s}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets a calibrated (uncached) run
    return speed
