"""The memory benchmark's stream part, small: a payload many chunks long goes from a server
process to a client process through the real GetTask stream and back through Upload into the
journal; the server compares SHA-256 digests of what it sent and what came back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_grpc_memory  # noqa: E402


@pytest.mark.skipif(not Path(bench_grpc_memory.TIME).exists(), reason="needs GNU time for peak memory")
def test_a_payload_of_many_chunks_comes_back_intact_and_memory_is_reported(tmp_path: Path):
    size = 5 * 2**20 + 12345  # five full 1 MiB chunks and a partial one
    res = bench_grpc_memory.stream_case(size, tmp_path, timeout=600)
    assert res["intact"] is True
    assert res["payload_bytes"] == size and res["over_grpc_limit"] is False
    # every chunk crossed the wire twice (down and up): framing on top of the payload
    assert res["wire_bytes"]["down"] > size and res["wire_bytes"]["up"] > size
    assert res["server_peak_rss_mib"] > 0 and res["client_peak_rss_mib"] > 0
