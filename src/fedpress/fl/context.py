"""What a strategy may read about the server: the model, the clock and who is busy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .types import GlobalState
from .versions import VersionStore


@dataclass
class ServerContext:
    """Server-side facts shared by the loop and its strategy; the loop keeps them current."""

    state: GlobalState
    num_samples: Sequence[int]
    rng: np.random.Generator
    versions: VersionStore = field(default_factory=VersionStore)
    in_flight: set[int] = field(default_factory=set)
    now: float = 0.0

    @property
    def num_clients(self) -> int:
        return len(self.num_samples)

    def idle_clients(self) -> list[int]:
        """Clients without work, in id order (sampling from them is then seed-deterministic)."""
        busy = self.in_flight
        return [c for c in range(self.num_clients) if c not in busy]

    def sample_idle(self, n: int) -> list[int]:
        """Up to ``n`` idle clients drawn uniformly without replacement."""
        idle = self.idle_clients()
        n = min(n, len(idle))
        if n <= 0:
            return []
        picks = self.rng.choice(len(idle), size=n, replace=False)
        return [idle[int(i)] for i in picks]
