"""Keyframe recovery through the transport: a corrupted and a lost uplink payload mid-run put
the client back in the run (its next payload is a keyframe the server can decode)."""

from __future__ import annotations

import dataclasses

import pytest
from test_fl_support import digits_inputs, quick_config

from fedpress.experiment.build import build_server
from fedpress.metrics.events import EventLog
from fedpress.models import build_model
from fedpress.transport.base import ClientResult

FAULT_ROUND = 2  # the client's third dispatch goes wrong


class Faulty:
    """Wraps a real client: on one round its uplink payload is corrupted or lost.

    ``lost``: the round's payload never reaches the server (the client encodes it, advancing
    its stream, then trains again on the same model and sends the next one: a sequence gap).
    ``honour_keyframe=False`` makes the client ignore the flag (the test must then fail).
    """

    def __init__(self, inner, fault: str, honour_keyframe: bool = True) -> None:
        self.inner, self.fault, self.honour = inner, fault, honour_keyframe
        self.rounds = 0
        self.keyframes_asked = 0

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
        self.keyframes_asked += int(keyframe)
        res = self.inner.run(payload, version, keyframe=keyframe and self.honour)
        if self.rounds == FAULT_ROUND:
            if self.fault == "corrupt":
                body = bytearray(res.payload)
                body[len(body) // 2] ^= 0xFF
                res = dataclasses.replace(res, payload=bytes(body))
            else:  # lost: the client's decoder must see a model again, so resend the same one
                self.inner.decoder.expected_seq = None
                self.inner.decoder.states = {}
                res = self.inner.run(payload, version)
        self.rounds += 1
        return res


def _run(fault: str, honour: bool = True):
    cfg = quick_config("fedbuff", clients=4, strategy__K=2, strategy__max_in_flight=4,
                       run__max_updates=24, codec__name="grad", codec__eb=0.05,
                       clients__compute__dist="constant", clients__codec_mb_per_s=100)
    log = EventLog(None)
    # an MLP big enough that its weights go through the stateful ``grad`` codec
    inputs = dataclasses.replace(digits_inputs(clients=4), model_fn=lambda: build_model("mlp", 1, 10, 8))
    server = build_server(cfg, inputs, log=log)
    real = server.transport._factory
    wrapped = {}

    def factory(cid):
        c = real(cid)
        if cid == 1:
            c = wrapped[cid] = Faulty(c, fault, honour)
        return c

    server.transport._factory = factory
    events = []
    orig = log.write

    def write(kind, **fields):
        events.append({"event": kind, **fields})
        return orig(kind, **fields)

    log.write = write
    summary = server.run()
    return summary, events, wrapped[1]


@pytest.mark.parametrize("fault", ["corrupt", "lost"])
def test_client_recovers_by_keyframe(fault):
    summary, events, client = _run(fault)
    mine = [e for e in events if e.get("client") == 1 and e["event"] in ("arrival", "dispatch")]
    arrivals = [e for e in mine if e["event"] == "arrival"]
    statuses = [e["status"] for e in arrivals]
    assert statuses[:FAULT_ROUND] == ["accepted"] * FAULT_ROUND
    assert statuses[FAULT_ROUND] == "rejected"
    reason = arrivals[FAULT_ROUND]["reason"]
    assert ("checksum" in reason) if fault == "corrupt" else ("sequence" in reason)
    # the next dispatch of that client asks for a keyframe, exactly once
    i = mine.index(arrivals[FAULT_ROUND])
    nxt = next(e for e in mine[i + 1 :] if e["event"] == "dispatch")
    assert nxt["keyframe"] is True and client.keyframes_asked == 1
    later = statuses[FAULT_ROUND + 1 :]
    assert len(later) >= 2 and set(later) == {"accepted"}
    assert summary["rejected"] == 1


def test_without_keyframe_the_client_stays_locked_out():
    """The control: a client that ignores the flag is never accepted again (what the keyframe
    contract prevents), so the test above can fail."""
    summary, events, _ = _run("corrupt", honour=False)
    statuses = [e["status"] for e in events if e["event"] == "arrival" and e["client"] == 1]
    assert statuses[FAULT_ROUND] == "rejected"
    assert len(statuses) > FAULT_ROUND + 2 and set(statuses[FAULT_ROUND:]) == {"rejected"}
