"""Payload-level limits, checked before any frame of a received payload is decoded.

Why: per-tensor checks alone let a tiny forged payload declare many tensors, huge totals or a
header and meta that expand to gigabytes. Everything the receiver would have to allocate follows
from the header, so the header is checked against these limits first and a payload over any of
them is refused with a one-line ``PayloadError`` before a frame is touched.

The defaults fit a 2 GB model in any dtype (a bfloat16 tensor decodes as float32, so a 2 GB
bfloat16 model needs 4 GB of output) and refuse the crafted payloads of issue 11. Raise them per
receiver: ``StreamDecoder(limits=PayloadLimits(max_total_bytes=16 * 2**30))``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import CodecError

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class PayloadLimits:
    """What one payload may declare; every field is an upper bound.

    Parameters
    ----------
    max_tensors
        Tensors in one payload (a 2 GB transformer has a few hundred to a few thousand).
    max_total_elements
        Declared elements over all tensors.
    max_total_bytes
        Declared output bytes over all tensors, in the dtype the decoder computes in
        (bfloat16 counts 4 bytes).
    max_tensor_bytes
        Declared output bytes of one tensor.
    max_header_bytes
        Header as it travels (possibly zstd-compressed).
    max_inflated_header_bytes
        Header after inflating; zstd output is capped at this many bytes.
    max_meta_bytes
        The msgpack bytes of the payload's ``meta`` map.
    max_meta_depth
        Nesting depth of ``meta`` (the map itself is depth 1).
    """

    max_tensors: int = 16_384
    max_total_elements: int = 2**31
    max_total_bytes: int = 5 * GIB
    max_tensor_bytes: int = 2 * GIB
    max_header_bytes: int = 16 * MIB
    max_inflated_header_bytes: int = 32 * MIB
    max_meta_bytes: int = 1 * MIB
    max_meta_depth: int = 16

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CodecError(f"PayloadLimits.{f.name} must be a positive integer, got {value!r}")

    def replace(self, **changes: int) -> PayloadLimits:
        """A copy with some limits changed (e.g. raised for a bigger model)."""
        return dataclasses.replace(self, **changes)


DEFAULT_LIMITS = PayloadLimits()
