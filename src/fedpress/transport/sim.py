"""The simulated link and compute model of one round trip (virtual-clock transports).

Simulated round trip of one dispatch::

    server_encode = the server encoding the model for this client (modeled)
    download      = bytes_down * 8 / (down_mbps * 1e6) + latency_s
    decode        = client-side decode of the model
    compute       = samples_processed * s_per_sample
    encode        = client-side encode of the delta
    upload        = bytes_up * 8 / (up_mbps * 1e6) + latency_s
    server_decode = the server decoding the delta (modeled)

Codec seconds come from a :class:`CodecClock` (``fedpress.fl.timing.TimingModel`` is the real
one: each codec's own measured throughput, ``none`` free), so this module knows no codec.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .base import Arrival


@dataclass(frozen=True)
class ClientProfile:
    """One client's speed: seconds per training sample, link bandwidths and one-way latency."""

    client_id: int
    s_per_sample: float
    up_mbps: float
    down_mbps: float
    latency_s: float


class CodecClock(Protocol):
    """Seconds a codec operation costs on the virtual clock."""

    def codec_seconds(self, link: str, op: str, raw_bytes: int, measured_s: float = 0.0) -> float:
        """Seconds for ``op`` (``"encode"``/``"decode"``) of ``raw_bytes`` on ``link``
        (``"up"``/``"down"``); ``measured_s`` is the wall time it took, where known."""
        ...


class WallCodecClock:
    """Charges what the codec measurably took (or nothing where unmeasured)."""

    def codec_seconds(self, link: str, op: str, raw_bytes: int, measured_s: float = 0.0) -> float:
        return float(measured_s)


def transfer_seconds(nbytes: int, mbps: float, latency_s: float) -> float:
    """Seconds to move ``nbytes`` over a ``mbps`` link with one-way ``latency_s``."""
    return nbytes * 8.0 / (mbps * 1e6) + latency_s


def round_trip(
    p: ClientProfile,
    *,
    bytes_down: int,
    bytes_up: int,
    samples: int,
    decode_s: float,
    encode_s: float,
    server_encode_s: float = 0.0,
    server_decode_s: float = 0.0,
) -> dict[str, float]:
    """The parts of one simulated round trip and their ``total_s`` (seconds)."""
    parts = {
        "server_encode_s": float(server_encode_s),
        "download_s": transfer_seconds(bytes_down, p.down_mbps, p.latency_s),
        "decode_s": float(decode_s),
        "compute_s": samples * p.s_per_sample,
        "encode_s": float(encode_s),
        "upload_s": transfer_seconds(bytes_up, p.up_mbps, p.latency_s),
        "server_decode_s": float(server_decode_s),
    }
    parts["total_s"] = sum(parts.values())
    return parts


def pop_due(
    queue: list[tuple[float, int, Arrival]], deadline: float | None, now: float
) -> tuple[Arrival | None, float]:
    """The earliest arrival of a virtual-clock queue of ``(time, seq, arrival)`` unless the
    deadline comes first, and the clock after it: both virtual-clock transports advance time
    this one way (ties are broken by ``seq``, the dispatch order)."""
    if not queue or (deadline is not None and queue[0][0] > deadline):
        return None, now if deadline is None else max(now, deadline)
    t, _, arrival = heapq.heappop(queue)
    return arrival, max(now, t)
