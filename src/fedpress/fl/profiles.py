"""Heterogeneous clients: compute speed, link bandwidths and latency, and the round-trip model.

Simulated round trip of one dispatch (what the in-process transport adds to its virtual clock):

    download  = bytes_down * 8 / (down_mbps * 1e6) + latency_s
    decode    = client-side decode of the model (measured, or raw_bytes / codec throughput)
    compute   = samples_processed * s_per_sample
    encode    = client-side encode of the delta (measured, or raw_bytes / codec throughput)
    upload    = bytes_up * 8 / (up_mbps * 1e6) + latency_s

``timing="modeled"`` makes codec seconds a constant throughput so runs are bit-for-bit
repeatable; ``"measured"`` uses the wall seconds the codec took (realistic, noisy). Server-side
encode/decode seconds are logged but not charged to the clock (the server is assumed to keep up).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClientProfile:
    client_id: int
    s_per_sample: float
    up_mbps: float
    down_mbps: float
    latency_s: float


@dataclass(frozen=True)
class TimingModel:
    mode: str = "modeled"
    codec_mb_per_s: float = 100.0

    def __post_init__(self) -> None:
        if self.mode not in ("modeled", "measured"):
            raise ValueError(f"timing must be 'modeled' or 'measured', got {self.mode!r}")
        if not self.codec_mb_per_s > 0:
            raise ValueError("codec_mb_per_s must be > 0")

    def codec_seconds(self, raw_bytes: int, measured_s: float) -> float:
        if self.mode == "measured":
            return float(measured_s)
        return raw_bytes / (self.codec_mb_per_s * 1e6)


def transfer_seconds(nbytes: int, mbps: float, latency_s: float) -> float:
    return nbytes * 8.0 / (mbps * 1e6) + latency_s


def round_trip(
    p: ClientProfile,
    *,
    bytes_down: int,
    bytes_up: int,
    samples: int,
    decode_s: float,
    encode_s: float,
) -> dict[str, float]:
    """The parts of one simulated round trip and their ``total`` (seconds)."""
    parts = {
        "download_s": transfer_seconds(bytes_down, p.down_mbps, p.latency_s),
        "decode_s": decode_s,
        "compute_s": samples * p.s_per_sample,
        "encode_s": encode_s,
        "upload_s": transfer_seconds(bytes_up, p.up_mbps, p.latency_s),
    }
    parts["total_s"] = sum(parts.values())
    return parts


def load_trace(path: str | Path) -> list[dict[str, float]]:
    """Rows of a CSV trace with a header: ``s_per_sample`` and optionally ``up_mbps``,
    ``down_mbps``, ``latency_s`` (a ``client_id`` column, if any, orders the rows)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"client trace {p} does not exist")
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "s_per_sample" not in rows[0]:
        raise ValueError(f"client trace {p} needs a header with an s_per_sample column")
    if "client_id" in rows[0]:
        rows.sort(key=lambda r: int(r["client_id"]))
    out = []
    for i, r in enumerate(rows):
        try:
            out.append({k: float(v) for k, v in r.items() if k != "client_id" and v not in ("", None)})
        except ValueError as exc:
            raise ValueError(f"client trace {p} row {i + 2}: {exc}") from None
    return out


def make_profiles(num_clients: int, cfg: Any, seed: int) -> list[ClientProfile]:
    """Draw every client's profile from ``cfg`` (a ``ClientsConfig``), deterministic in ``seed``.

    Compute: ``constant``, ``lognormal`` (median ``s_per_sample``, log-space ``sigma``) or
    ``trace`` (rows cycle over clients). Network: each client draws one tier of
    ``cfg.network.tiers`` with probability proportional to its weight; a trace's columns win.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    comp, net = cfg.compute, cfg.network
    if comp.dist == "constant":
        speed = np.full(num_clients, comp.s_per_sample)
    elif comp.dist == "lognormal":
        speed = comp.s_per_sample * np.exp(comp.sigma * rng.standard_normal(num_clients))
    elif comp.dist == "trace":
        speed = np.zeros(num_clients)
    else:
        raise ValueError(f"unknown compute distribution {comp.dist!r}")
    weights = np.array([t.weight for t in net.tiers], dtype=np.float64)
    tier_idx = rng.choice(len(net.tiers), size=num_clients, p=weights / weights.sum())
    trace = load_trace(comp.trace) if comp.dist == "trace" else None
    profiles = []
    for c in range(num_clients):
        tier = net.tiers[int(tier_idx[c])]
        vals = {
            "s_per_sample": float(speed[c]),
            "up_mbps": float(tier.up_mbps),
            "down_mbps": float(tier.down_mbps),
            "latency_s": float(net.latency_s),
        }
        if trace is not None:
            vals.update({k: v for k, v in trace[c % len(trace)].items() if k in vals})
        profiles.append(ClientProfile(client_id=c, **vals))
    return profiles
