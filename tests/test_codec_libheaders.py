"""zfp and SZ3 stream headers are checked against the wire entry before the C library runs.

The expected zfp header is compared with what zfpy itself writes (an independent reference), and
forged streams (huge arrays, random headers, random bodies, bit flips, every CRC recomputed) are
decoded in a child process, so a segfault fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zfpy
from pysz import sz, szAlgorithm, szConfig, szErrorBoundMode

from fedpress.codec.baselines import zfp_layout
from fedpress.codec.errors import PayloadError
from fedpress.codec.libheaders import (
    check_sz3_stream,
    checked_zfp_stream,
    zfp_header,
    zfp_max_stream_bytes,
)

ZFP_SHAPES = [(1,), (3,), (4,), (5,), (4, 4), (8, 12), (12, 8), (999,), (100, 40), (40, 100),
              (2**18 + 3,), (256, 260)]


@pytest.mark.parametrize("shape", ZFP_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zfp_header_is_what_zfpy_writes(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    x = rng.standard_normal(shape).astype(dtype)
    for tol in (0.5, 1e-3, 3.3e-9, 1e10):
        stream = zfpy.compress_numpy(x, tolerance=tol)
        head = zfp_header(shape, np.dtype(dtype), tol)
        assert stream[: len(head)] == head
        # the read bound covers what the encoder wrote (tight tolerance: most bit planes)
        assert len(stream) <= zfp_max_stream_bytes(shape, np.dtype(dtype), len(head))
        assert checked_zfp_stream(stream, shape, np.dtype(dtype), tol)[: len(stream)] == stream


def test_zfp_header_refuses_other_entries() -> None:
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    stream = zfpy.compress_numpy(x, tolerance=1e-3)
    f4 = np.dtype(np.float32)
    for layout, dtype, tol in [((12, 8), f4, 1e-3), ((96,), f4, 1e-3), ((8, 16), f4, 1e-3),
                               ((8, 12), np.dtype(np.float64), 1e-3), ((8, 12), f4, 1e-1)]:
        with pytest.raises(PayloadError, match="zfp stream header"):
            checked_zfp_stream(stream, layout, dtype, tol)
    short = checked_zfp_stream(stream, (8, 12), f4, 1e-3)
    assert len(short) >= zfp_max_stream_bytes((8, 12), f4, 12) and short.startswith(stream)


def test_zfp_layout_rule() -> None:
    assert zfp_layout((64, 48)) == (64, 48)
    assert zfp_layout((16, 4, 3, 3)) == (576,)
    assert zfp_layout((6, 8)) == (48,)


def sz3_stream(n: int, dtype: type, eb: float, algo) -> bytes:
    cfg = szConfig()
    cfg.errorBoundMode = szErrorBoundMode.ABS
    cfg.absErrorBound = eb
    cfg.cmprAlgo = algo
    x = np.cumsum(np.random.default_rng(n).standard_normal(n)).astype(dtype)
    return sz.compress(x, cfg)[0].tobytes()


@pytest.mark.parametrize("algo", [szAlgorithm.INTERP_LORENZO, szAlgorithm.NOPRED])
@pytest.mark.parametrize("n", [1, 7, 129, 1000, 70_000])
def test_sz3_check_accepts_real_streams_and_refuses_others(algo, n: int) -> None:
    for dtype in (np.float32, np.float64):
        blob = sz3_stream(n, dtype, 1e-3, algo)
        check_sz3_stream(blob, n, int(algo), 1e-3)
        with pytest.raises(PayloadError, match="values"):
            check_sz3_stream(blob, n + 1, int(algo), 1e-3)
        with pytest.raises(PayloadError, match="bound"):
            check_sz3_stream(blob, n, int(algo), 2e-3)
    other = szAlgorithm.NOPRED if algo == szAlgorithm.INTERP_LORENZO else szAlgorithm.INTERP_LORENZO
    blob = sz3_stream(n, np.float32, 1e-3, algo)
    (payload,) = struct.unpack_from("<Q", blob, 8)
    forged = bytearray(blob)
    k = (forged[16 + payload + 2] + 7) // 8
    struct.pack_into("<Q", forged, 16 + payload + 3 + k, 2**40)  # element count
    with pytest.raises(PayloadError):
        check_sz3_stream(bytes(forged), n, int(algo), 1e-3)
    if n > 200:  # large enough that SZ3 does not fall back to lossless
        with pytest.raises(PayloadError, match="algorithm"):
            check_sz3_stream(blob, n, int(other), 1e-3)


FUZZ = r"""
import json, struct, sys, zlib
import numpy as np
from fedpress.codec.errors import PayloadError
from fedpress.codec.frame import FrameReader, FrameWriter
from fedpress.codec.libheaders import zfp_header
from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder
from fedpress.codec.wire import Envelope, unpack

name, tries = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(11)
shape = (64, 48)
x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
payload = StreamEncoder(Policy.uniform(name, mode="abs", eb=1e-3), "s").encode({"w": x})
env = unpack(payload)
r = FrameReader(env.frames[0])
kind, abs_eb, _ = r.unpack("BdI")
blob = bytes(r.section())
rest = bytes(r._data[r._pos:])
assert kind == 2, "expected a lossy frame"
head = 12 if name == "zfp" else 16

def send(stream: bytes) -> str:
    # every CRC recomputed: the library stream's, and the wire format's (by Envelope.pack)
    w = FrameWriter()
    w.pack("BdI", kind, abs_eb, zlib.crc32(stream))
    w.section(stream)
    forged = Envelope(env.tensors, [w.getvalue() + rest], None, {}).pack()
    try:
        out = StreamDecoder().decode(forged)["w"]
        assert out.shape == shape and out.dtype == np.float32
        return "decoded"
    except PayloadError as exc:
        assert "\n" not in str(exc)
        return "refused"

counts = {}
def tally(tag, result):
    counts[tag + ":" + result] = counts.get(tag + ":" + result, 0) + 1

if name == "zfp":
    for layout in [(2**24, 2**24), (2**20, 2**20), (2**47,), (64, 2**23)]:
        huge = zfp_header(layout, np.dtype(np.float32), 1e-3)
        assert send(huge + blob[len(huge):]) == "refused", layout
for _ in range(tries):
    b = bytearray(blob)
    b[4:head] = rng.integers(0, 256, head - 4, dtype=np.uint8).tobytes()
    tally("header", send(bytes(b)))
for _ in range(tries):
    n = int(rng.integers(0, 2 * len(blob)))
    body = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if name == "zfp":
        b = blob[:head] + body
    else:
        (ps,) = struct.unpack_from("<Q", blob, 8)
        b = blob[:8] + struct.pack("<Q", n) + body + blob[16 + ps:]
    tally("body", send(bytes(b)))
for _ in range(tries):
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 8))):
        p = int(rng.integers(0, len(b)))
        b[p] ^= 1 << int(rng.integers(0, 8))
    tally("flip", send(bytes(b)))
print(json.dumps(counts))
"""


@pytest.mark.parametrize("name", ["zfp", "sz3", "sz3-nopred"])
def test_forged_library_streams_never_crash(name: str) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(FUZZ), name, "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"decoder process died ({proc.returncode}): {proc.stderr[-3000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts.get("header:refused", 0) == 300  # no random header passes as the entry's
    assert sum(counts.values()) == 900
