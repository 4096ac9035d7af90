"""`pipecat-twilio` on loopback, driven by a Twilio Media Streams client written from
Twilio's message reference (voice_server_moshi.pipecat.twilio_client)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

pytest.importorskip("pipecat", reason="needs the 'pipecat' extra")

from voice_server_moshi.audio import g711
from voice_server_moshi.corpus.agent import ScriptedAgentTransport, text_schedule
from voice_server_moshi.corpus.assemble import CorpusCall, build_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.modes.clock import ManualClock
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.pipecat.service import MoshiService
from voice_server_moshi.pipecat.twilio import create_app
from voice_server_moshi.pipecat.twilio_cli import running_app
from voice_server_moshi.pipecat.twilio_client import play_twilio_call


def corpus_call() -> CorpusCall:
    return build_call(bundled_clips(), 12, 20.0, exchanges=2)  # backchannel, then barge-in


def mulaw(x: np.ndarray) -> bytes:
    return g711.encode((np.clip(x, -1, 1) * 32767).astype(np.int16), "mulaw")


def scripted(call: CorpusCall) -> MoshiAdapter:
    return MoshiAdapter(MoshiSettings(), transport=ScriptedAgentTransport(
        call.agent, 8000, text_schedule(call.agent_segments)))


async def test_twiml_answer_points_the_stream_at_ws() -> None:
    app = create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://voice.example.com") as client:
        for method in ("GET", "POST"):
            r = await client.request(method, "/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
            assert ('<Connect><Stream url="wss://voice.example.com/ws" /></Connect>'
                    in r.text)
    fixed = create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False,
                       public_url="wss://x.test/ws?a=1&b=2")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fixed),
                                 base_url="http://h") as client:
        assert 'url="wss://x.test/ws?a=1&amp;b=2"' in (await client.get("/")).text


async def test_a_socket_that_is_not_twilio_is_closed_1008() -> None:
    app = create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False)
    async with running_app(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await ws.send(json.dumps({"event": "media", "media": {"payload": ""}}))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


@contextlib.contextmanager
def pipecat_twilio_cli(*args: str) -> Iterator[int]:
    """`voice-server-moshi pipecat-twilio` in its own process; yields its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "pipecat-twilio", "--host",
         "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH":
        os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                         os.environ.get("PYTHONPATH", "")])})
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        assert ready, "pipecat-twilio did not start within 180 s"
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["event"] == "listening", line
        yield int(info["port"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
async def test_six_second_call_to_pipecat_twilio_on_the_embedded_dev_checkpoint(
    dev_checkpoint: object,
) -> None:
    call = corpus_call()
    with pipecat_twilio_cli("--checkpoint", "dev") as port:
        res = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(call.caller[:48000]))
    assert res.sent_frames == 300 and res.other_stream_sids == 0 and not res.unknown
    # Agent media for this streamSid covering >= 90 % of the call's duration ...
    assert res.media_ms >= 0.9 * res.call_ms
    # ... at real-time pace: from the call's first second on and never ahead of the call.
    # How much arrives before `stop` depends on the machine keeping up with real time (an
    # in-process engine on a loaded 2-core VM stalls for whole seconds, and the mode then
    # catches up); here only that the stream flowed during the call. Measured figures:
    # `voice-server-moshi bench pipecat`.
    assert res.media[0][1] < 1000
    got = 0.0
    for _, pos, n in res.media:
        got += n / 8.0
        assert got <= pos + 120, (pos, got)
    assert sum(n for _, p, n in res.media if p <= res.call_ms + 100) / 8.0 >= 0.3 * res.call_ms
    # Clean end after `stop`: the server closed the socket normally, promptly.
    assert res.close_code == 1000 and res.closed_after_stop_s is not None
    assert res.closed_after_stop_s < 3.0


@pytest.mark.slow
async def test_clear_on_the_barge_in_and_none_on_the_backchannel() -> None:
    call = corpus_call()
    services: list[MoshiService] = []
    # The scripted corpus agent talks where the corpus says; the mode is clocked by the
    # caller's media (ManualClock), so its decisions do not depend on this machine's load.
    app = create_app(adapter_factory=lambda: scripted(call), prewarm=False,
                     on_service=services.append, clock_factory=ManualClock)
    async with running_app(app) as port:
        res = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(call.caller))
    (svc,) = services
    verdicts = {o.verdict: o for o in svc.mode.overlaps}
    assert set(verdicts) == {"backchannel", "barge-in"}, svc.mode.overlaps
    (barge,) = [s for s in call.caller_segments if s.kind == "barge-in"]
    backchannels = [s for s in call.caller_segments if s.kind == "backchannel"]
    # Exactly one `clear`, for the barge-in: the mode's barge-in verdict is the labelled
    # barge-in (call time), and the clear reached the client after the caller began it.
    # (Client-side arrival times are not compared tighter: on a loaded machine the
    # in-process server may run seconds behind the client.)
    assert len(res.clears) == 1
    assert barge.start_ms - 100 <= verdicts["barge-in"].onset_ms <= barge.end_ms
    assert res.clears[0] > barge.start_ms
    for b in backchannels:  # no user turn, hence no interruption, on a backchannel
        assert not any(b.start_ms - 200 <= d.t_ms <= b.end_ms + 200
                       for d in svc.decisions if d.kind == "user-started")
    assert any(b.start_ms - 200 <= verdicts["backchannel"].onset_ms <= b.end_ms
               for b in backchannels)
    assert res.close_code == 1000


def test_the_pipecat_method_mode_clocked_output_replaces_still_exists() -> None:
    # ModeClockedTransport removes the output's simulated-playback sleep (ADR 0090); a
    # Pipecat release that renames it would silently bring back the drift.
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketOutputTransport

    from voice_server_moshi.pipecat.twilio import _ModeClockedOutput

    assert callable(FastAPIWebsocketOutputTransport._write_audio_sleep)
    assert "_write_audio_sleep" in vars(_ModeClockedOutput)
