"""gRPC transport: the one server loop with clients in other processes or machines.

Protocol ``fedpress.v1`` (``fedpress_v1.proto``; the generated ``*_pb2*.py`` modules are
committed, regenerate them with the command in the ``.proto``). Server side:
:class:`GrpcTransport` (the loop's :class:`~fedpress.transport.base.Transport`, real clock) served
by :func:`start_server`; client side: :class:`GrpcClient`. Tokens and TLS: :mod:`.auth`.
"""

from .client import GrpcClient, RefusedError
from .journal import Journal
from .service import PROTOCOL, TransferSlots, start_server
from .transport import GrpcTransport

__all__ = ["PROTOCOL", "GrpcClient", "GrpcTransport", "Journal", "RefusedError", "TransferSlots", "start_server"]
