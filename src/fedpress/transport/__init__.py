"""Transports move encoded payloads between the server loop and clients.

The loop (``fedpress.fl.server``) only sees :class:`~fedpress.transport.base.Transport`; the
in-process transport runs clients on a virtual clock, a network transport runs them elsewhere.
"""

from .base import Arrival, ClientResult, Transport

__all__ = ["Arrival", "ClientResult", "Transport"]
