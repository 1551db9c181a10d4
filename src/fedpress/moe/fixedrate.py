"""A fixed-rate, error-bounded weight codec whose decoders are plain torch (any device) and one numba pass (CPU).

Why a new mode: entropy-coded codecs (``fast``, ``sz3``) compress better, but their decoders run
on the host, serially. Expert weights are decoded on every cache miss, on the compute device, so
the decoder must be a few vectorised tensor ops: unpack ``b``-bit integers and scale them.

Layout: the flattened tensor is cut into blocks of ``block`` elements; each block stores its
minimum ``lo`` and step ``s`` (float32) and every element ``q = round((x - lo) / s)`` in ``b`` bits
(the same ``b`` for the whole tensor, chosen as the smallest that meets the bound in every
block). The reconstruction is ``q * s + lo`` in float32, computed the same way by the numpy
encoder (which verifies the bound on it) and both run-time decoders: plain torch ops on a GPU
(``decode_torch``), and on a CPU one fused numba pass (``decode_cpu``, ``fixedrate_cpu``), since
there a chain of tensor ops costs one memory pass each.

Frame: ``u8 kind | u8 bits | u32 block | u64 n | lo[nb] | step[nb] | planes``; the scales are
float32 (kind 7) or float16 (kind 8: the encoder uses them when the bound still holds with
them, which halves the scale overhead; weights dequantised from a checkpoint with float16 block
scales, as GGUF's Q4_1, are rebuilt exactly). For ``b <= 8`` one plane of ``b``-bit codes (8
codes in ``b`` bytes, little-endian), for ``b > 8`` a plane of the low bytes followed by a plane
of the high ``b - 8`` bits. Decoders widen float16 scales to float32 once per frame and compute
``q * s + lo`` in float32 for both kinds.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from fedpress.codec.base import BoundedCodec, LayerState, check_dtype, check_finite, register_codec
from fedpress.codec.errors import CodecError, PayloadError

from .fixedrate_cpu import decode_into

_HEAD = struct.Struct("<BBIQ")
KIND = 7  # float32 scales
KIND_F16 = 8  # float16 scales
_SCALE_BYTES = {KIND: 4, KIND_F16: 2}
MAX_BITS = 16
_EPS32 = float(np.finfo(np.float32).eps)


def pack_plane(q: np.ndarray, k: int) -> bytes:
    """Pack codes ``q`` (``len(q) % 8 == 0``, values < 2**k) into ``k`` bits each, little-endian."""
    if k == 8:
        return q.astype(np.uint8).tobytes()
    bits = ((q[:, None].astype(np.uint16) >> np.arange(k, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_plane_np(buf: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of ``pack_plane`` in numpy (the reference decoder)."""
    if k == 8:
        return buf[:n].astype(np.int64)
    bits = np.unpackbits(buf, bitorder="little")[: n * k].reshape(n, k).astype(np.int64)
    return (bits << np.arange(k, dtype=np.int64)).sum(axis=1)


def unpack_plane_torch(buf: Any, n: int, k: int) -> Any:
    """Inverse of ``pack_plane`` in torch, on ``buf``'s device.

    Widths that divide 8 (1, 2, 4, 8) stay in uint8: each byte holds ``8 / k`` whole codes, one
    shift and mask per code (no int64 temporaries: 8x less memory traffic). Other widths: 8 codes
    share ``k`` bytes, assembled into one int64 word, then shifted and masked.
    """
    import torch

    if k == 8:
        return buf[:n]
    if 8 % k == 0:
        per = 8 // k
        shifts = torch.arange(per, device=buf.device, dtype=torch.uint8) * k
        return ((buf[: n // per, None] >> shifts) & ((1 << k) - 1)).reshape(-1)
    groups = buf[: n // 8 * k].view(n // 8, k).to(torch.int64)
    shifts = torch.arange(k, device=buf.device, dtype=torch.int64) * 8
    word = (groups << shifts).sum(dim=1, keepdim=True)
    out = (word >> (torch.arange(8, device=buf.device, dtype=torch.int64) * k)) & ((1 << k) - 1)
    return out.reshape(-1)


@register_codec
class FixedRateCodec(BoundedCodec):
    """Block-scaled uniform quantisation at a fixed bit width; ``|x - x_hat| <= bound`` holds.

    Parameters
    ----------
    mode, eb:
        The pointwise bound (``rel``: relative to the tensor's value range; ``abs``: absolute).
    block:
        Elements per scale block (two float32 per block, 64 / block bits of overhead per weight;
        two float16, 32 / block bits, where the bound holds with them).
    bits:
        0 picks the smallest width that meets the bound; 1..16 forces one and fails with a clear
        error when it cannot meet the bound.
    fit:
        1 also tries blocks of 32 and, per block size, the fewest bits that can represent each
        block's distinct values, keeping the smallest frame that meets the bound on the actual
        reconstruction. Why: weights dequantised from a block-quantised checkpoint (SmolLM2's
        GGUF is Q4_1: 16 levels per 32 weights) lie on a per-block grid, which 4 bits rebuild
        to float32 rounding, far below what the worst-case width formula assumes.
    """

    name = "fixedrate"

    def __init__(self, mode: str = "rel", eb: float = 1e-2, block: int = 128, bits: int = 0,
                 fit: int = 0) -> None:
        super().__init__(mode, eb)
        if fit not in (0, 1):
            raise CodecError(f"fixedrate fit must be 0 or 1, got {fit!r}")
        if fit and bits:
            raise CodecError("fixedrate fit=1 chooses the bits itself: leave bits=0")
        self.fit = fit
        if not (isinstance(block, int) and 8 <= block <= 1 << 20 and block % 8 == 0):
            raise CodecError(f"fixedrate block must be a multiple of 8 in [8, 2**20], got {block!r}")
        if not (isinstance(bits, int) and 0 <= bits <= MAX_BITS):
            raise CodecError(f"fixedrate bits must be 0 (auto) or 1..{MAX_BITS}, got {bits!r}")
        self.block, self.bits = block, bits

    def params(self) -> dict[str, Any]:
        out = {**super().params(), "block": self.block, "bits": self.bits}
        return {**out, "fit": 1} if self.fit else out

    # ------------------------------------------------------------------ encode
    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        check_dtype(x)
        check_finite(x)
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        abs_eb = self.bound.absolute(flat) if flat.size else 0.0
        sizes = [self.block] + ([32] if self.fit and self.block != 32 else [])
        frames, error = [], None
        for block in sizes:  # with fit, a block size that cannot hold the bound is skipped
            try:
                frames.append(self._encode_block(flat, block, abs_eb))
            except CodecError as exc:
                error = error or exc
        if not frames:
            raise error  # type: ignore[misc]
        return min(frames, key=len)

    def _blocks(self, flat: np.ndarray, block: int):
        n = flat.size
        nb = max(1, math.ceil(n / block))
        padded = np.empty(nb * block, dtype=np.float32)
        padded[:n] = flat
        padded[n:] = flat[-1] if n else 0.0
        blocks = padded.reshape(nb, block)
        lo = blocks.min(axis=1)
        return padded, blocks, lo, blocks.max(axis=1).astype(np.float64) - lo

    def _encode_block(self, flat: np.ndarray, block: int, abs_eb: float) -> bytes:
        n = flat.size
        padded, blocks, lo, rng = self._blocks(flat, block)
        # float32 rounding of q * s + lo costs a few ulps of the largest magnitude: keep a margin
        half = abs_eb - 4 * _EPS32 * float(np.abs(padded).max(initial=0.0))
        need = int(rng.max(initial=0.0) > 0)
        if need:
            if half <= 0:
                raise CodecError(
                    f"fixedrate cannot hold an absolute bound of {abs_eb:.3g}: it is below float32 "
                    "resolution for these weights"
                )
            need = max(1, math.ceil(math.log2(float(rng.max()) / (2 * half) + 1)))
        if self.fit and need > 1:
            srt = np.sort(blocks, axis=1)
            distinct = 1 + int((np.diff(srt, axis=1) > 0).sum(axis=1).max(initial=0))
            grid = max(1, math.ceil(math.log2(distinct)))
            if grid < need and grid <= MAX_BITS:  # a per-block grid may hold the bound with fewer bits
                frame = self._smallest(blocks, lo, rng, grid, n, block, flat, abs_eb)
                if frame is not None:
                    return frame
        bits = need if self.bits == 0 else self.bits
        if bits > MAX_BITS or (self.bits and need > self.bits):
            raise CodecError(
                f"fixedrate cannot hold the bound {self.bound.mode} {self.bound.value:g} "
                f"with {'at most ' + str(MAX_BITS) if self.bits == 0 else str(self.bits)} bits "
                f"(needs {need})"
            )
        while True:
            frame = self._smallest(blocks, lo, rng, bits, n, block, flat, abs_eb)
            if frame is not None:
                return frame
            if bits >= MAX_BITS or self.bits:  # pragma: no cover - the margin above prevents it
                raise CodecError("fixedrate could not meet its bound (float32 rounding)")
            bits += 1

    def _smallest(self, blocks, lo, rng, bits, n, block, flat, abs_eb) -> bytes | None:
        """The frame at ``bits`` with float16 scales if it holds the bound, else with float32
        scales if that does, else None. The bound is checked on the actual reconstruction."""
        for half in (True, False):
            frame, recon = self._quantise(blocks, lo, rng, bits, n, block, half)
            # "<= all" and not "> any": a NaN in the reconstruction must fail the check
            if frame is not None and (np.abs(recon - flat) <= abs_eb).all():
                return frame
        return None

    def _quantise(self, blocks, lo, rng, bits, n, block, half: bool = False):
        levels = (1 << bits) - 1 if bits else 1
        step = (rng / levels).astype(np.float32) if bits else np.zeros_like(lo)
        if half:  # nearest float16 scales; codes are clipped, so the bound check decides
            with np.errstate(over="ignore"):
                lo = lo.astype(np.float16).astype(np.float32)
                step = step.astype(np.float16).astype(np.float32)
            if not (np.isfinite(lo).all() and np.isfinite(step).all()):
                return None, None  # beyond float16's range: float32 scales only
        safe = np.where(step > 0, step, 1).astype(np.float32)
        q = np.rint((blocks - lo[:, None]) / safe[:, None])
        q = np.clip(q, 0, levels).astype(np.int64)
        q[step == 0] = 0
        recon = (q.astype(np.float32) * step[:, None] + lo[:, None]).reshape(-1)[:n]
        flat_q = q.reshape(-1)
        planes = b""
        if bits > 8:
            planes = pack_plane(flat_q & 0xFF, 8) + pack_plane(flat_q >> 8, bits - 8)
        elif bits:
            planes = pack_plane(flat_q, bits)
        kind, dt = (KIND_F16, "<f2") if half else (KIND, "<f4")
        head = _HEAD.pack(kind, bits, block, n)
        return head + lo.astype(dt).tobytes() + step.astype(dt).tobytes() + planes, recon

    # ------------------------------------------------------------------ decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        """Reference decoder in numpy (the torch one, ``decode_torch``, is used at run time)."""
        bits, block, n, lo, step, planes = parse_frame(frame, shape)
        nb = lo.size
        if bits:
            q = _codes(np.frombuffer(planes, dtype=np.uint8), bits, n, block, unpack_plane_np)
        else:
            q = np.zeros(nb * block, dtype=np.int64)
        recon = (q.reshape(nb, block).astype(np.float32) * step[:, None] + lo[:, None]).reshape(-1)
        return recon[:n].reshape(shape).astype(np.dtype(dtype))


def parse_frame(frame: bytes, shape: tuple[int, ...]):
    """Check a frame's lengths against ``shape``; return its fields (``PayloadError`` if bad):
    ``bits, block, n, lo, step, planes`` with float32 ``lo``/``step`` and non-finite scales
    refused."""
    bits, block, n, scales, planes = _parse(frame, shape)
    if not np.isfinite(scales).all():
        raise PayloadError("fixedrate frame has non-finite scales")
    nb = scales.size // 2
    return bits, block, n, scales[:nb], scales[nb:], planes


def _parse(frame: bytes | memoryview, shape: tuple[int, ...]):
    """The checked header, the scales as one float32 array (``lo`` then ``step``; not yet
    checked for finiteness) and the planes (uint8). Few numpy calls: every expert load runs
    this twice while holding the GIL."""
    if len(frame) < _HEAD.size:
        raise PayloadError("fixedrate frame is shorter than its header")
    kind, bits, block, n = _HEAD.unpack_from(frame, 0)
    if kind not in _SCALE_BYTES or bits > MAX_BITS or block == 0 or block % 8:
        raise PayloadError("fixedrate frame header is malformed")
    if n != math.prod(shape):
        raise PayloadError(f"fixedrate frame holds {n} elements, the shape needs {math.prod(shape)}")
    nb = max(1, -(-n // block))
    total = nb * block
    plane = total // 8 * bits
    size = _SCALE_BYTES[kind]
    head = _HEAD.size + 2 * size * nb
    if len(frame) != head + plane:
        raise PayloadError("fixedrate frame has the wrong length (truncated or corrupted)")
    buf = np.frombuffer(frame, dtype=np.uint8)
    # the scales start at byte 14, unaligned: one copy (astype) makes them aligned float32
    scales = np.frombuffer(frame, dtype="<f4" if kind == KIND else "<f2", count=2 * nb,
                           offset=_HEAD.size).astype(np.float32)
    return bits, block, n, scales, buf[head:]


def _codes(buf, bits: int, n: int, block: int, unpack):
    total = max(1, math.ceil(n / block)) * block
    if bits <= 8:
        return unpack(buf, total, bits)
    low = unpack(buf[:total], total, 8)
    high = unpack(buf[total:], total, bits - 8)
    if hasattr(low, "to"):  # torch: uint8 planes widen before the shift
        import torch

        return low.to(torch.int32) | (high.to(torch.int32) << 8)
    return low | (high << 8)


def decode_cpu(frame: bytes | memoryview, shape: tuple[int, ...]) -> Any:
    """Decode a fixedrate frame into a new CPU float32 tensor with the fused numba kernel.

    The frame is read in place (no copy of the packed bytes); the kernel writes straight into
    the tensor's memory, bit-identical to the numpy reference ``FixedRateCodec.decode``, and
    refuses non-finite scales as it reads them.
    """
    import torch

    bits, block, n, scales, planes = _parse(frame, shape)
    # numpy's allocator, as the raw path's copy uses: torch.empty's fresh pages measured slower
    out = np.empty(shape, dtype=np.float32)
    if not decode_into(planes, bits, block, scales, out.reshape(-1)):
        raise PayloadError("fixedrate frame has non-finite scales")
    return torch.from_numpy(out)


def decode_torch(frame: bytes | memoryview, shape: tuple[int, ...], device: Any = "cpu",
                 fused: bool | None = None) -> Any:
    """Decode a fixedrate frame into a float32 tensor on ``device``.

    On a CPU (``fused`` None or True) the fused numba kernel (``decode_cpu``) does it in one
    pass; elsewhere (or with ``fused=False``) plain torch ops on ``device`` unpack and scale, so
    only the packed bytes are copied to the device.
    """
    import torch

    dev = torch.device(device)
    if fused is None:
        fused = dev.type == "cpu"
    if fused:
        if dev.type != "cpu":
            raise ValueError(f"the fused fixedrate decoder runs on the CPU, not {dev}")
        return decode_cpu(frame, shape)
    bits, block, n, lo, step, planes = parse_frame(frame, shape)
    buf = torch.frombuffer(bytearray(planes), dtype=torch.uint8).to(dev, non_blocking=True) if len(
        planes
    ) else torch.empty(0, dtype=torch.uint8, device=dev)
    lo_t = torch.from_numpy(lo.copy()).to(dev)
    step_t = torch.from_numpy(step.copy()).to(dev)
    nb = lo_t.numel()
    q = _codes(buf, bits, n, block, unpack_plane_torch) if bits else torch.zeros(
        nb * block, dtype=torch.int64, device=dev
    )
    recon = q.view(nb, block).to(torch.float32) * step_t[:, None] + lo_t[:, None]
    return recon.reshape(-1)[:n].reshape(shape)
