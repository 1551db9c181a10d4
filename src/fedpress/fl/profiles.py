"""Heterogeneous clients: drawing compute speed, link bandwidths and latency per client.

The round-trip model itself lives with the virtual-clock transport
(``fedpress.transport.sim``); the codec-time model in ``fedpress.fl.timing``. Both are
re-exported here for callers of the older import path.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fedpress.transport.sim import ClientProfile, round_trip, transfer_seconds

from .timing import CodecSpeed, TimingModel

__all__ = [
    "ClientProfile",
    "CodecSpeed",
    "TimingModel",
    "load_trace",
    "make_profiles",
    "round_trip",
    "transfer_seconds",
]


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
