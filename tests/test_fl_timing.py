"""The honest codec clock: calibrated per codec, cached per machine, charged per link and side,
raw free; checked against raw_bytes / throughput computed here."""

from __future__ import annotations

import json

import pytest
from test_fl_support import mlp_digits_inputs, quick_config

from fedpress.experiment.build import build_server
from fedpress.fl.codec_adapter import CodecSpec
from fedpress.fl.timing import CodecSpeed, _setting_key, codec_speed, machine_key
from fedpress.metrics.events import EventLog


def test_calibration_is_cached_per_machine_and_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRESS_CACHE_DIR", str(tmp_path))
    spec = CodecSpec("lossless", "rel", 1e-2)
    first = codec_speed(spec)
    assert first.encode_mb_s > 0 and first.decode_mb_s > 0
    table = json.loads((tmp_path / "codec_speed.json").read_text())
    assert set(table) == {machine_key()} and _setting_key(spec, "float32") in table[machine_key()]
    # a planted entry is what the next run reads (calibration happens once, not per run)
    table[machine_key()][_setting_key(spec, "float32")] = {"encode_mb_s": 12.5, "decode_mb_s": 25.0}
    (tmp_path / "codec_speed.json").write_text(json.dumps(table))
    assert codec_speed(spec) == CodecSpeed(12.5, 25.0)


def test_a_run_charges_each_side_its_codec_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRESS_CACHE_DIR", str(tmp_path))
    enc, dec = 7.0, 35.0  # MB/s planted for grad at REL 0.05
    spec = CodecSpec("grad", "rel", 0.05)
    (tmp_path / "codec_speed.json").write_text(json.dumps(
        {machine_key(): {_setting_key(spec, "float32"): {"encode_mb_s": enc, "decode_mb_s": dec}}}))
    cfg = quick_config("fedbuff", clients=4, strategy__K=2, run__max_updates=6,
                       codec__name="grad", codec__eb=0.05)

    class Log(EventLog):
        def __init__(self):
            super().__init__(None)
            self.arrivals = []

        def write(self, event, **f):
            if event == "arrival":
                self.arrivals.append(f)
            return super().write(event, **f)

    log = Log()
    build_server(cfg, mlp_digits_inputs(4), log).run()
    assert len(log.arrivals) >= 6
    for a in log.arrivals:
        raw_up = a["raw_bytes_up"]
        assert a["encode_s"] == pytest.approx(raw_up / (enc * 1e6))
        assert a["server_decode_s"] == pytest.approx(raw_up / (dec * 1e6))
        assert a["decode_s"] == 0.0 and a["server_encode_s"] == 0.0  # raw downlink is free
        parts = ("server_encode_s", "download_s", "decode_s", "compute_s", "encode_s",
                 "upload_s", "server_decode_s")
        assert a["total_s"] == pytest.approx(sum(a[p] for p in parts))
        assert a["t"] == pytest.approx(a["dispatched_at"] + a["total_s"])
