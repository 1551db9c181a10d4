"""The upload journal: a received result is on disk (fsynced) before the client hears "accepted".

Each entry is ``<seq>.bin`` (the payload) plus ``<seq>.json`` (what the server needs besides the
bytes); the JSON file is renamed into place last, so an entry exists exactly when both are
complete. Payloads stream to disk chunk by chunk, so the server holds no upload in memory while
it arrives. Entries up to the last checkpoint are deleted by :meth:`Journal.trim`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalWriter:
    """One upload being written; ``commit`` makes it durable and gives it a sequence number."""

    def __init__(self, journal: Journal, tmp: Path) -> None:
        self.journal = journal
        self.tmp = tmp
        self._fh = tmp.open("wb")
        self.size = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self.size += len(data)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self, meta: dict[str, Any]) -> tuple[int, Path]:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self.journal._commit(self.tmp, meta)


class Journal:
    """Durable, ordered store of received uploads in ``directory``."""

    def __init__(self, directory: str | Path, durable: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._lock = threading.Lock()
        self._tmp = 0
        for stale in self.dir.glob("*.tmp"):
            stale.unlink()
        seqs = [e[0] for e in self.entries()]
        self._next = max(seqs, default=0) + 1

    def advance(self, past: int) -> None:
        """Number new entries above ``past`` (a checkpoint's last used entry: trimmed entries
        leave no file behind to count from)."""
        with self._lock:
            self._next = max(self._next, past + 1)

    def begin(self) -> JournalWriter:
        with self._lock:
            self._tmp += 1
            n = self._tmp
        return JournalWriter(self, self.dir / f"upload-{os.getpid()}-{n}.bin.tmp")

    def _commit(self, tmp: Path, meta: dict[str, Any]) -> tuple[int, Path]:
        with self._lock:
            seq = self._next
            self._next += 1
            data = self.dir / f"{seq:012d}.bin"
            os.replace(tmp, data)
            mtmp = self.dir / f"{seq:012d}.json.tmp"
            with mtmp.open("w", encoding="utf-8") as fh:
                json.dump(meta, fh)
                fh.flush()
                if self.durable:
                    os.fsync(fh.fileno())
            os.replace(mtmp, self.dir / f"{seq:012d}.json")
            if self.durable:
                fsync_dir(self.dir)
        return seq, data

    def entries(self, after: int = 0) -> Iterator[tuple[int, dict[str, Any], Path]]:
        """Complete entries with a sequence number above ``after``, in order."""
        for meta_path in sorted(self.dir.glob("*.json")):
            seq = int(meta_path.stem)
            data = meta_path.with_suffix(".bin")
            if seq <= after or not data.is_file():
                continue
            yield seq, json.loads(meta_path.read_text(encoding="utf-8")), data

    def trim(self, upto: int) -> None:
        """Delete entries a checkpoint already covers."""
        for meta_path in sorted(self.dir.glob("*.json")):
            seq = int(meta_path.stem)
            if seq > upto:
                break
            meta_path.unlink(missing_ok=True)
            meta_path.with_suffix(".bin").unlink(missing_ok=True)
