"""Transports move encoded payloads between the server loop and clients.

The loop (``fedpress.fl.server``) only sees :class:`~fedpress.transport.base.Transport`; the
in-process transport runs clients on a virtual clock (round trips modeled in
``fedpress.transport.sim``), a network transport runs them elsewhere. Nothing here imports the
engine (``fedpress.fl``); the engine imports this package.
"""

from .base import Arrival, ClientLike, ClientResult, Transport

__all__ = ["Arrival", "ClientLike", "ClientResult", "Transport"]
