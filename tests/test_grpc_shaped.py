"""The shaped-link benchmark's short variant: real processes in network namespaces over links
limited with tc. Skips (with the reason) where namespaces cannot be made (not root, no iproute2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import netns  # noqa: E402

WHY = netns.unavailable()


@pytest.mark.skipif(WHY is not None, reason=f"shaped links unavailable: {WHY}")
def test_quick_shaped_benchmark_measures_and_cleans_up(tmp_path: Path):
    out = tmp_path / "quick.json"
    before = set(netns.leftover("fp"))  # another run's namespaces are not ours to judge
    r = subprocess.run([sys.executable, str(BENCH / "bench_grpc_shaped.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["machine"] and res["command"]
    cases = {c["codec"]: c for c in res["cases"]}
    assert set(cases) == {"none", "grad"}
    none, grad = cases["none"], cases["grad"]
    for c in (none, grad):
        assert c["comm_s"] > 0 and c["comm_pred_s"] > 0
        # the kernel saw at least what the transport counted (it adds HPACK, TCP and IP)
        assert c["link_bytes"]["up"] >= c["wire_bytes"]["up"] >= c["bytes_up"]
        assert c["link_bytes"]["down"] >= c["wire_bytes"]["down"] >= c["bytes_down"]
    assert grad["bytes_up"] < none["bytes_up"] / 3
    # a raw MLP delta (~200 kB) over the 10 Mbit/s uplink alone takes >= 0.16 s: shaping is real
    assert none["comm_s"] > 203_000 * 8 / 10e6
    assert out.with_suffix(".png").is_file()
    assert not set(netns.leftover("fp")) - before  # every namespace it made is removed
