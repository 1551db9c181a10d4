"""The run summary, computed in one streaming pass over events (live or from a log file).

Idle time counts every available client over the whole run: a client is idle whenever it has no
work (before its first dispatch, between its result and its next dispatch, after its last
result, or never dispatched at all), so ``idle = clients x run time - time spent on dispatches``
(FedFa claims zero). ``idle_between_dispatches_s`` is the narrower older measure: only the gaps
from an arrival to the same client's next dispatch. Wait time: from an accepted
arrival to the first global update after it (how long a result sits before it counts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any


class SummaryBuilder:
    def __init__(self, target_accuracy: float | None = None) -> None:
        self.target = target_accuracy
        self.strategy: str | None = None
        self.num_clients = 0
        self.arrivals = self.accepted = self.dropped = self.rejected = self.dispatches = 0
        self.versions = 0
        self.bytes = Counter({"up": 0, "up_raw": 0, "down": 0, "down_raw": 0})
        self.staleness: Counter[int] = Counter()
        self._last_arrival: dict[int, float] = {}
        self._participants: set[int] = set()
        self._out: dict[int, float] = {}  # client -> dispatch time of its work in flight
        self.idle_s = 0.0
        self.idle_gaps = 0
        self.busy_s = 0.0
        self._pending_n = 0
        self._pending_t = 0.0
        self.wait_s = 0.0
        self.waited = 0
        self.evals: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.hit: dict[str, Any] | None = None
        self.sim_time = 0.0
        self.end: dict[str, Any] = {}
        self.codec_s = Counter({"client_encode_s": 0.0, "server_decode_s": 0.0})

    def add(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        t = e.get("t")
        if isinstance(t, (int, float)):
            self.sim_time = max(self.sim_time, float(t))
        if kind == "start":
            self.strategy = e.get("strategy")
            self.num_clients = int(e.get("num_clients", 0))
            if self.target is None:
                self.target = e.get("target_accuracy")
        elif kind == "dispatch":
            self.dispatches += 1
            c = e["client"]
            self._participants.add(c)
            self._out[c] = t
            self.bytes["down"] += e.get("bytes_down", 0)
            self.bytes["down_raw"] += e.get("raw_bytes_down", 0)
            if c in self._last_arrival:
                self.idle_s += t - self._last_arrival.pop(c)
                self.idle_gaps += 1
        elif kind == "arrival":
            self.arrivals += 1
            self._last_arrival[e["client"]] = t
            self._out.pop(e["client"], None)
            self.busy_s += t - e.get("dispatched_at", t)
            self.bytes["up"] += e.get("bytes_up", 0)
            self.bytes["up_raw"] += e.get("raw_bytes_up", 0)
            self.codec_s["client_encode_s"] += e.get("encode_s", 0.0) or 0.0
            self.codec_s["server_decode_s"] += e.get("server_decode_s", 0.0) or 0.0
            status = e.get("status", "accepted")
            if status == "accepted":
                self.accepted += 1
                self.staleness[int(e.get("staleness", 0))] += 1
                self._pending_n += 1
                self._pending_t += t
            elif status == "rejected":
                self.rejected += 1
            else:
                self.dropped += 1
        elif kind == "update":
            self.versions = max(self.versions, int(e["version"]))
            self.wait_s += self._pending_n * t - self._pending_t
            self.waited += self._pending_n
            self._pending_n, self._pending_t = 0, 0.0
        elif kind == "eval":
            rec = {k: e.get(k) for k in ("t", "version", "updates", "accuracy", "loss")}
            self.evals.append(rec)
            if self.best is None or rec["accuracy"] > self.best["accuracy"]:
                self.best = rec
            if self.hit is None and self.target is not None and rec["accuracy"] >= self.target:
                self.hit = rec
        elif kind == "end":
            self.end = dict(e)

    def result(self) -> dict[str, Any]:
        final = self.evals[-1] if self.evals else {}
        n_part = len(self._participants)
        stal_n = sum(self.staleness.values())
        available = self.num_clients * self.sim_time
        busy = self.busy_s + sum(self.sim_time - t0 for t0 in self._out.values())
        idle = max(available - busy, 0.0)
        return {
            "strategy": self.strategy,
            "num_clients": self.num_clients,
            "participating_clients": n_part,
            "final_accuracy": final.get("accuracy"),
            "final_loss": final.get("loss"),
            "best_accuracy": self.best["accuracy"] if self.best else None,
            "best_at_time": self.best["t"] if self.best else None,
            "target_accuracy": self.target,
            "time_to_target": self.hit["t"] if self.hit else None,
            "updates_to_target": self.hit["updates"] if self.hit else None,
            "versions_to_target": self.hit["version"] if self.hit else None,
            "sim_time": self.sim_time,
            "versions": self.versions,
            "dispatches": self.dispatches,
            "arrivals": self.arrivals,
            "updates": self.accepted,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "bytes_up": self.bytes["up"],
            "bytes_up_raw": self.bytes["up_raw"],
            "bytes_down": self.bytes["down"],
            "bytes_down_raw": self.bytes["down_raw"],
            "compression_ratio_up": (self.bytes["up_raw"] / self.bytes["up"]) if self.bytes["up"] else None,
            "staleness_hist": {str(k): v for k, v in sorted(self.staleness.items())},
            "staleness_mean": (
                sum(k * v for k, v in self.staleness.items()) / stal_n if stal_n else None
            ),
            "staleness_max": max(self.staleness) if self.staleness else None,
            "idle_time_total_s": idle,
            "idle_time_per_client_s": idle / self.num_clients if self.num_clients else 0.0,
            "idle_fraction": idle / available if available > 0 else 0.0,
            "idle_between_dispatches_s": self.idle_s,
            "wait_time_mean_s": self.wait_s / self.waited if self.waited else 0.0,
            "client_encode_s": self.codec_s["client_encode_s"],
            "server_decode_s": self.codec_s["server_decode_s"],
            "stop_reason": self.end.get("reason"),
            "wall_s": self.end.get("wall_s"),
        }


def summarize(events: Iterable[dict[str, Any]], target_accuracy: float | None = None) -> dict:
    """The summary of a sequence of events (e.g. ``read_events(run_dir)``)."""
    b = SummaryBuilder(target_accuracy)
    for e in events:
        b.add(e)
    return b.result()
