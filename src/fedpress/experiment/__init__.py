"""Assembling experiments: the composition root above the engine, its transports and backends.

``build`` turns a config and in-memory data into a ready :class:`~fedpress.fl.server.Server`
with the transport the config chooses (in-process virtual clock, or client work on Ray);
``run`` is ``fedpress run`` / ``fedpress plot``. It sits above ``fl``, ``transport`` and
``backends`` so that none of them imports another in a cycle.
"""
