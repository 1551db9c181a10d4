"""A budgeted cache of decoded experts on the compute device, with eviction and prefetch.

Why its own module: the policy (which decoded experts stay) is what decides bytes moved and
tokens/s once the codec is fixed, and it is independent of the model. Keys are
(layer, expert); values are dicts of device tensors. ``get`` is the demand path (a miss decodes
synchronously); ``prefetch`` hands keys to one background thread that decodes them while the
current layer computes; a ``get`` on a key in flight waits for it (a prefetch hit).

Policies: ``lru`` (evict the least recently used) and ``lfu`` (evict the least frequently used
over the whole run, recency breaking ties: experts that the router favours stay).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

Key = tuple[int, int]
POLICIES = ("lru", "lfu")


@dataclass
class CacheStats:
    """Counters since the last ``reset``; per-token figures divide by the tokens generated."""

    requests: int = 0
    hits: int = 0
    prefetch_hits: int = 0
    misses: int = 0
    loads: int = 0
    prefetch_loads: int = 0
    prefetch_unused: int = 0
    evictions: int = 0
    bytes_moved: int = 0
    decode_s: float = 0.0
    copy_s: float = 0.0
    stall_s: float = 0.0
    peak_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        return (self.hits + self.prefetch_hits) / max(self.requests, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


class ExpertCache:
    """At most ``slots`` decoded experts; ``loader(key)`` -> (tensors, DecodeTiming, bytes read)."""

    def __init__(self, loader: Callable[[Key], tuple[dict[str, Any], Any, int]], slots: int,
                 policy: str = "lru", expert_bytes: int = 0) -> None:
        if slots < 1:
            raise ValueError("the expert cache needs at least one slot")
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.loader, self.slots, self.policy, self.expert_bytes = loader, slots, policy, expert_bytes
        self._items: OrderedDict[Key, dict[str, Any]] = OrderedDict()
        self._freq: Counter[Key] = Counter()
        self._pending: dict[Key, Future] = {}
        self._unused: set[Key] = set()
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self.stats = CacheStats()

    # ------------------------------------------------------------------ demand path
    def get(self, key: Key) -> dict[str, Any]:
        with self._lock:
            self.stats.requests += 1
            self._freq[key] += 1
            if key in self._items:
                self._items.move_to_end(key)
                if key in self._unused:
                    self._unused.discard(key)
                    self.stats.prefetch_hits += 1
                else:
                    self.stats.hits += 1
                return self._items[key]
            fut = self._pending.get(key)
        if fut is not None:
            t0 = time.perf_counter()
            fut.result()
            with self._lock:
                self.stats.stall_s += time.perf_counter() - t0
                if key in self._items:
                    self._unused.discard(key)
                    self.stats.prefetch_hits += 1
                    self._items.move_to_end(key)
                    return self._items[key]
        with self._lock:
            self.stats.misses += 1
        t0 = time.perf_counter()
        tensors = self._load(key)
        with self._lock:
            self.stats.stall_s += time.perf_counter() - t0
            self._insert(key, tensors)
        return tensors

    def _load(self, key: Key) -> dict[str, Any]:
        tensors, timing, nbytes = self.loader(key)
        with self._lock:
            self.stats.loads += 1
            self.stats.bytes_moved += nbytes
            self.stats.decode_s += timing.decode_s
            self.stats.copy_s += timing.copy_s
        return tensors

    def _insert(self, key: Key, tensors: dict[str, Any]) -> None:
        self._items[key] = tensors
        self._items.move_to_end(key)
        while len(self._items) > self.slots:
            self._evict(protect=key)
        self.stats.peak_bytes = max(self.stats.peak_bytes, len(self._items) * self.expert_bytes)

    def _evict(self, protect: Key) -> None:
        candidates = [k for k in self._items if k != protect]
        if self.policy == "lru":
            victim = candidates[0]  # OrderedDict: oldest first
        else:
            order = {k: i for i, k in enumerate(self._items)}
            victim = min(candidates, key=lambda k: (self._freq[k], order[k]))
        del self._items[victim]
        self.stats.evictions += 1
        if victim in self._unused:
            self._unused.discard(victim)
            self.stats.prefetch_unused += 1

    # ------------------------------------------------------------------ prefetch path
    def prefetch(self, keys: Iterable[Key]) -> None:
        """Decode ``keys`` in the background unless resident or already in flight."""
        for key in keys:
            with self._lock:
                if key in self._items or key in self._pending:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="expert-prefetch")
                self._pending[key] = self._pool.submit(self._prefetch_one, key)

    def _prefetch_one(self, key: Key) -> None:
        try:
            tensors = self._load(key)
            with self._lock:
                self.stats.prefetch_loads += 1
                if key not in self._items:
                    self._unused.add(key)
                    self._insert(key, tensors)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def drain(self) -> None:
        """Wait for every prefetch in flight (call before reading the stats)."""
        while True:
            with self._lock:
                futs = list(self._pending.values())
            if not futs:
                return
            for f in futs:
                f.result()

    def reset_stats(self) -> None:
        self.drain()
        with self._lock:
            self.stats = CacheStats(peak_bytes=len(self._items) * self.expert_bytes)

    def clear(self) -> None:
        self.drain()
        with self._lock:
            self._items.clear()
            self._freq.clear()
            self._unused.clear()

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __len__(self) -> int:
        return len(self._items)
