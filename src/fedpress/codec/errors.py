"""Exceptions of the codec layer: every refusal names what was wrong, never a traceback to a user."""


class CodecError(ValueError):
    """Base class: bad parameters, bad input tensors or bad payloads."""


class PayloadError(CodecError):
    """A received payload is truncated, corrupted, of an unknown version or malformed."""


class NonFiniteError(CodecError):
    """A tensor routed to a lossy codec holds NaN or Inf."""


class StreamStateError(CodecError):
    """A stateful stream's payload does not match the decoder's state (gap, replay or mismatch)."""
