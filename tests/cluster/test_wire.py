"""The data plane between a front door and an engine (version 1, no Ray, no I/O):
every kind round-trips exactly, and malformed input is refused with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voice_server_moshi.callpath import wire
from voice_server_moshi.callpath.kinds import (
    CallParams,
    CancelSay,
    FinishCaller,
    Grant,
    SayAudio,
    SayText,
    SteerAnswer,
)
from voice_server_moshi.engine.persona import PersonaError
from voice_server_moshi.engine.slot import SlotError, SlotOutput, SttOutput
from voice_server_moshi.engine.steering import SteerEvent

FRAME = 1920


def test_frames_requests_and_events_round_trip_exactly() -> None:
    pcm = np.linspace(-1, 1, FRAME, dtype=np.float32)
    frame = wire.decode_request(wire.encode_frame(pcm))
    assert isinstance(frame, np.ndarray) and np.array_equal(frame, pcm)
    for req in (SayText("say-1", "héllo"), SayAudio("say-2", "hi", b"\x01\x00" * 100),
                CancelSay(flush=False), FinishCaller()):
        assert wire.decode_request(wire.encode_request(req)) == req
    out = wire.decode_event(wire.encode_event(SlotOutput(
        41, pcm, 1234, " héllo", steering=(SteerEvent("say-1", "started"),))))
    assert isinstance(out, SlotOutput) and np.array_equal(out.pcm, pcm)
    assert (out.step, out.text_token, out.text, out.steering) == (
        41, 1234, " héllo", (SteerEvent("say-1", "started"),))
    silent = wire.decode_event(wire.encode_event(SlotOutput(0, pcm, 3, None)))
    assert isinstance(silent, SlotOutput) and silent.text is None and not silent.steering
    for ev in (SttOutput(7, " word", 99, 0.75, 500.0), SttOutput(0, None, -1, final=True),
               SteerAnswer("say-3", "failed", "nothing to say"), SlotError("tick failed")):
        assert wire.decode_event(wire.encode_event(ev)) == ev


def test_hello_and_grant_carry_the_call_and_are_versioned() -> None:
    params = CallParams({"text_temperature": "0.4", "text_seed": "11"})
    hello = wire.decode_hello(wire.encode_hello(wire.Hello(call_id="c1", wait_s=2.5,
                                                           params=params)))
    assert (hello.call_id, hello.ticket, hello.wait_s, hello.params) == ("c1", None, 2.5, params)
    assert wire.decode_hello(wire.encode_hello(wire.Hello(ticket="t"))).ticket == "t"
    grant = Grant({"text_seed": 1}, "dev", "lm.safetensors", "mimi.safetensors", 2,
                  caller_transcript=True, extra={"replica": "r1"})
    assert wire.decode_grant(wire.encode_grant(grant)) == grant
    with pytest.raises(wire.WireError, match="version 2; this side speaks version 1"):
        wire.decode_hello(json.dumps({"v": 2, "ticket": "t"}))
    with pytest.raises(wire.WireError, match="bad hello"):
        wire.decode_hello(json.dumps({"v": 1, "params": {}}))
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.decode_hello("{")


def test_a_persona_travels_in_the_hello_and_the_grant() -> None:
    """NVIDIA's query parameters become the call's persona, voice and seeds (ADR 0130);
    the hello carries them to the engine, the grant carries back what was applied."""
    params = CallParams.from_query({"text_prompt": " Be brief. ", "voice_prompt": "NATM1.pt",
                                    "seed": "42", "audio_seed": "7", "other": "x"})
    assert params == CallParams({"text_seed": "42", "audio_seed": "7"},
                                persona="<system> Be brief. <system>", voice="NATM1")
    hello = wire.decode_hello(wire.encode_hello(wire.Hello(call_id="c1", params=params)))
    assert hello.params == params and hello.params.prompt is not None
    assert CallParams.from_query({"seed": "-1"}) == CallParams()  # -1: NVIDIA's "none"
    assert "persona" not in CallParams().as_dict()  # a plain call's hello is unchanged
    grant = Grant({"text_seed": 42}, "dev-personaplex", "lm", "mimi", 2,
                  persona="<system> Be brief. <system>", voice="NATM1", persona_cached=True)
    assert wire.decode_grant(wire.encode_grant(grant)) == grant
    with pytest.raises(PersonaError, match="seed must be an integer"):
        CallParams.from_query({"seed": "soon"})
    with pytest.raises(wire.WireError, match="voice must be a string"):
        wire.decode_hello(json.dumps({"v": 1, "call_id": "c", "params": {"voice": 3}}))


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty message"),
    (b"\x01" + bytes(10), "a 0x01 frame is 7681 bytes"),
    (b"\x02{}", "missing"),
    (b"\x03\xff\xff\xff\xff{}", "truncated"),
    (b"\x04[]", "must be a JSON object"),
    (b"\x42abc", "unknown front-door message kind 0x42"),
])
def test_bad_requests_are_refused_with_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(wire.WireError, match=says):
        wire.decode_request(data)


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty message"),
    (b"\x11\x00", "truncated output"),
    (wire.encode_event(SlotOutput(1, np.zeros(FRAME, np.float32), 2, "x"))[:-4], "expected"),
    (b"\x13" + json.dumps({"id": "a", "status": "sung"}).encode(), "status 'sung'"),
    (b"\x12{}", "kind 0x12"),
    (b"\x42abc", "unknown engine message kind 0x42"),
])
def test_bad_events_are_refused_with_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(wire.WireError, match=says):
        wire.decode_event(data)


def test_a_frame_of_the_wrong_size_is_not_encoded() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_frame(np.zeros(100, np.float32))


def test_serve_and_the_shared_cluster_parts_never_import_ray() -> None:
    """Single-process ``serve`` (with or without ingress workers) runs without Ray."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import voice_server_moshi.server.cli, voice_server_moshi.server.workers\n"
            "import voice_server_moshi.callpath.remote, voice_server_moshi.cluster.engine_side\n"
            "import voice_server_moshi.callpath.wire, voice_server_moshi.cluster.metrics\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_front_doors_call_path_never_imports_torch() -> None:
    """An ingress worker or the cluster's ingress runs calls without loading a model."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import voice_server_moshi.server.workers, voice_server_moshi.callpath.remote\n"
            "import voice_server_moshi.callpath.front, voice_server_moshi.cluster.metrics\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not bad, bad[:3]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
