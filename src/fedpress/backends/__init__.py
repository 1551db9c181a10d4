"""Simulation backends: where the simulated clients' work runs.

The server loop, the strategies and the virtual clock do not change with the backend; only the
transport does. ``inprocess`` (default) runs every client in the server's process; ``ray`` runs
them on a pool of long-lived Ray actors, locally or on a cluster (``fedpress.backends.ray_transport``).
Ray is imported only when the ``ray`` backend is chosen, so it stays an optional extra.
"""

from .config import SimulationConfig

__all__ = ["SimulationConfig"]
