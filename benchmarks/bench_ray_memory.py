"""Peak memory of a process tree (the benchmark process and every process it started: Ray's
raylet, object store and workers included), sampled in a background thread.

PSS (proportional set size) is summed, so memory shared between processes (the object store,
shared libraries) is counted once, split between its users, not once per process. Imported by
``bench_ray_scale.py`` and by the Flower script (which runs in its own venv).
"""

from __future__ import annotations

import threading
import time

import psutil


def tree_pss_bytes(root: psutil.Process) -> int:
    """Sum of PSS over ``root`` and its descendants (RSS where PSS is not readable)."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            mi = p.memory_full_info()
            total += getattr(mi, "pss", mi.rss)
        except psutil.Error:
            continue
    return total


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.peak`` (bytes) over the block."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.root = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes(self.root))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.peak = tree_pss_bytes(self.root)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss_bytes(self.root))


def now() -> float:
    return time.perf_counter()
