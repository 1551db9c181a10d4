"""glibc malloc settings for the long-running ``fedpress server`` process.

Why a module of its own: a server with many client connections frees and reuses buffers from
many gRPC threads, and glibc's defaults keep much of that memory resident after it is freed.
``bench_grpc_memory.py`` and ``bench_grpc_connections.py`` measure their effect; elsewhere (not
glibc) they do nothing and say so by returning False.
"""

from __future__ import annotations

import ctypes
import threading

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc only)
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def cap_malloc_arenas(arenas: int = 2, mmap_threshold: int = 256 * 1024) -> bool:
    """Limit glibc's malloc to ``arenas`` heaps and serve blocks of ``mmap_threshold`` bytes or
    more (payloads, chunks, decoded tensors) from their own mappings, returned on free.

    Why: glibc gives allocating threads their own arenas and keeps freed chunks there; with a
    gRPC handler thread per client stream the server's peak memory grew with the number of
    clients from that alone (876 MiB at 16 clients against 748 MiB with two arenas). And glibc
    raises its mmap threshold after the first large free, after which multi-MB payloads come
    from the heap and fragment it. Call it before threads start. Returns False where this is
    not glibc."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


class MemoryTrimmer:
    """Return freed heap memory to the system every ``every_s`` seconds (``malloc_trim(0)``).

    Why: gRPC's socket reads and message slices are small enough to come from the malloc heaps,
    and glibc gives back only the top of a heap, so memory freed after each client's transfer
    stays resident. ``bench_grpc_connections.py``: what stays per client after its transfers
    went from 1.76 to 0.77 MiB with 26.4 MB payloads (110 to 70 MiB in all at 8 clients with
    6.6 MB ones); the peak during transfers did not change. A trim costs milliseconds.
    """

    def __init__(self, every_s: float = 0.5) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.every_s = every_s
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._libc = _libc()

    def start(self) -> MemoryTrimmer:
        """Start the background thread (a no-op where this is not glibc)."""
        if self._libc is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fedpress-malloc-trim", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._libc.malloc_trim(0)
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
