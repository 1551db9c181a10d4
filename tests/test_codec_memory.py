"""Decoders work in memory that is a small constant times their output.

Measured from outside: a child process decodes one payload (made by another process, so the
encoder's memory does not count) and reports how far its peak resident size rose during the
decode (Linux: the peak is reset through ``/proc/self/clear_refs`` and read as ``VmHWM``; it sees
numpy, numba and C-library allocations alike). The factor allowed is
generous (4x the output, float32), so the test fails on a regression to the old 7-9x, not on noise.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamEncoder

FACTOR = 4.0

MEASURE = """
import sys, time
import numpy as np
from fedpress.codec.stream import StreamDecoder

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

small, big = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
StreamDecoder().decode(small)  # libraries loaded, kernels compiled, allocator warm
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS")
t0 = time.perf_counter()
out = StreamDecoder().decode(big)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
nbytes = sum(v.nbytes for v in out.values())
print((peak - before) / nbytes, seconds, nbytes)
"""


def make(kind: str, side: int) -> np.ndarray:
    if kind == "zeros":
        return np.zeros((side, side), np.float32)
    return (np.random.default_rng(side).standard_normal((side, side)) * 1e-3).astype(np.float32)


def measure(codec: str, kind: str, side: int, tmp_path: Path) -> tuple[float, float]:
    params = {} if codec in ("zstd", "raw") else {"mode": "abs" if kind == "zeros" else "rel",
                                                 "eb": 1e-2}
    policy = Policy.uniform(codec, **params)
    small, big = tmp_path / "small.fpz", tmp_path / "big.fpz"
    small.write_bytes(StreamEncoder(policy).encode({"w": make(kind, 64)}))
    big.write_bytes(StreamEncoder(policy).encode({"w": make(kind, side)}))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MEASURE), str(small), str(big)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    factor, seconds, nbytes = proc.stdout.split()
    assert int(nbytes) == side * side * 4
    return float(factor), float(seconds)


@pytest.mark.parametrize("codec", ["grad", "linear", "fast", "sz3", "zfp", "zstd"])
def test_decode_memory_is_a_small_multiple_of_the_output(codec: str, tmp_path: Path) -> None:
    factor, _ = measure(codec, "gauss", 1024, tmp_path)
    assert factor <= FACTOR, f"{codec} decode peaked at {factor:.2f}x its output"


@pytest.mark.parametrize("codec", ["grad", "linear", "zfp"])
def test_tiny_payload_of_a_big_zero_tensor(codec: str, tmp_path: Path) -> None:
    """A few hundred bytes that decode to 16 MiB: bounded memory, and quick."""
    factor, seconds = measure(codec, "zeros", 2048, tmp_path)
    assert factor <= FACTOR, f"{codec} decode peaked at {factor:.2f}x its output"
    assert seconds < 10


@pytest.mark.slow
def test_issue_case_grad_8192_squared(tmp_path: Path) -> None:
    """Issue 11's case: a ~262-byte grad payload of one 8192x8192 tensor (256 MiB out)."""
    payload = StreamEncoder(Policy.uniform("grad", mode="abs", eb=1e-2)).encode(
        {"w": make("zeros", 8192)})
    assert len(payload) < 400
    factor, seconds = measure("grad", "zeros", 8192, tmp_path)
    assert factor <= FACTOR and seconds < 10
