"""Old global models kept while clients still train on them.

Rules that mix *models* (FedAsync, FedFa's model variant) rebuild a client's model as
``w_base + delta`` and need the exact global model of version ``base_version``. Each dispatch
holds a reference to its version; a version no longer current is dropped when its last
reference is released, so memory is bounded by the number of distinct versions in flight.
"""

from __future__ import annotations

from .types import Tensors


class VersionStore:
    def __init__(self, keep_old: bool = True) -> None:
        self.keep_old = keep_old
        self._models: dict[int, Tensors] = {}
        self._refs: dict[int, int] = {}
        self.current = -1

    def publish(self, version: int, params: Tensors) -> None:
        """Make ``params`` the current model; treat it as read-only from now on."""
        old = self.current
        self._models[version] = params
        self.current = version
        if old >= 0 and old != version:
            self._maybe_drop(old)

    def acquire(self, version: int) -> None:
        if self.keep_old:
            self._refs[version] = self._refs.get(version, 0) + 1

    def release(self, version: int) -> None:
        if not self.keep_old or version not in self._refs:
            return
        self._refs[version] -= 1
        if self._refs[version] <= 0:
            del self._refs[version]
            self._maybe_drop(version)

    def get(self, version: int) -> Tensors:
        try:
            return self._models[version]
        except KeyError:
            raise KeyError(
                f"global model version {version} is no longer held (current {self.current})"
            ) from None

    def __len__(self) -> int:
        return len(self._models)

    def _maybe_drop(self, version: int) -> None:
        if version == self.current:
            return
        if self.keep_old and self._refs.get(version, 0) > 0:
            return
        self._models.pop(version, None)
