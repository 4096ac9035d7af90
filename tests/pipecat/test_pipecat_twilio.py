"""`pipecat-twilio` on loopback, driven by a Twilio Media Streams client written from
Twilio's message reference (voice_server_moshi.pipecat.twilio_client)."""

from __future__ import annotations

import asyncio
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
from fastapi import FastAPI

pytest.importorskip("pipecat", reason="needs the 'pipecat' extra")

from twilio.request_validator import RequestValidator

from voice_server_moshi.audio import g711
from voice_server_moshi.corpus.agent import ScriptedAgentTransport, text_schedule
from voice_server_moshi.corpus.assemble import CorpusCall, build_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.errors import ServerBusyError, SettingsError
from voice_server_moshi.modes.clock import ManualClock
from voice_server_moshi.moshi.adapter import MoshiAdapter
from voice_server_moshi.moshi.scripted import ScriptedTransport
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


TOKEN = "twilio-auth-token-for-tests-0123"


def signed(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> dict[str, str]:
    """The header Twilio sends: its own RequestValidator's signature of ``url`` (and the
    POST parameters)."""
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params or {})}


CALL = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "0" * 32, "From": "+15550001111",
        "To": "+15550002222", "CallStatus": "ringing", "Direction": "inbound"}


def app_for(call: CorpusCall | None = None, **kw: object) -> FastAPI:
    c = call or corpus_call()
    args: dict[str, object] = {"adapter_factory": lambda: scripted(c), "prewarm": False,
                               "auth_token": TOKEN, **kw}
    return create_app(**args)  # type: ignore[arg-type]


async def test_twiml_answer_points_the_stream_at_ws() -> None:
    app = app_for()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://voice.example.com") as client:
        r = await client.get("/", headers=signed("http://voice.example.com/"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
        assert '<Connect><Stream url="wss://voice.example.com/ws" /></Connect>' in r.text
        r = await client.post("/", data=CALL, headers=signed("http://voice.example.com/", CALL))
        assert r.status_code == 200 and "<Connect>" in r.text
    fixed = app_for(public_url="wss://x.test/ws?a=1&b=2")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fixed),
                                 base_url="http://h") as client:
        # Behind a proxy Twilio signed the public URL, not the one this process sees.
        r = await client.post("/", data=CALL, headers=signed("https://x.test/", CALL))
        assert 'url="wss://x.test/ws?a=1&amp;b=2"' in r.text


async def test_the_webhook_refuses_a_missing_or_wrong_signature_with_403() -> None:
    app = app_for(public_url="https://voice.example.com/moshi")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://10.0.0.5:8765") as client:
        url = "https://voice.example.com/moshi/"
        bad = [{}, signed(url, CALL, token="another-accounts-token"),
               signed(url, {**CALL, "From": "+15559999999"}),  # parameters changed
               signed("http://10.0.0.5:8765/", CALL)]  # not the URL Twilio requested
        for headers in bad:
            r = await client.post("/", data=CALL, headers=headers)
            assert r.status_code == 403 and "<Response>" not in r.text
        r = await client.post("/", data=CALL, headers=signed(url, CALL))
        assert r.status_code == 200
        assert 'url="wss://voice.example.com/moshi/ws"' in r.text
        metrics = (await client.get("/metrics")).text
    assert "moshi_twilio_bad_signature_total 4" in metrics


async def test_an_unsigned_stream_gets_403_and_starts_nothing() -> None:
    services: list[MoshiService] = []
    app = app_for(on_service=services.append)
    async with running_app(app) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        for headers in (None, signed(f"wss://127.0.0.1:{port}/ws", token="wrong"),
                        signed(f"wss://127.0.0.1:{port}/other")):
            with pytest.raises(websockets.InvalidStatus) as exc:
                await websockets.connect(url, additional_headers=headers, proxy=None)
            assert exc.value.response.status_code == 403
        # Signed as Twilio signs it: the call runs (one short second of it).
        res = await play_twilio_call(url, mulaw(np.zeros(8000)), auth_token=TOKEN)
    assert res.sent_frames == 50 and res.close_code == 1000
    assert len(services) == 1  # the refused upgrades made no pipeline


def test_no_token_no_app_unless_insecure_is_asked_for() -> None:
    with pytest.raises(SettingsError, match="TWILIO_AUTH_TOKEN"):
        create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False, env={})
    create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False, env={},
               insecure_no_signature=True)
    create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False,
               env={"TWILIO_AUTH_TOKEN": TOKEN})
    for bad in ("wss://x.test/stream", "ftp://x.test/", "https://x.test/?q=1"):
        with pytest.raises(SettingsError, match="--public-url"):
            create_app(adapter_factory=lambda: scripted(corpus_call()), prewarm=False,
                       auth_token=TOKEN, public_url=bad)


async def full_house(port: int, token: str | None) -> tuple[str, int | None, str]:
    """With every slot taken: (webhook answer, close code and reason of a second stream)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as h:
        for _ in range(200):  # the first call takes its slot once its `start` is read
            if "moshi_twilio_calls_active 1" in (await h.get("/metrics")).text:
                break
            await asyncio.sleep(0.05)
        headers = signed(f"http://127.0.0.1:{port}/", CALL, token) if token else {}
        answer = (await h.post("/", data=CALL, headers=headers)).text
    second = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(np.zeros(1600)),
                                    auth_token=token)
    return answer, second.close_code, second.close_reason


async def test_a_full_house_answers_busy_and_closes_a_late_stream_1013() -> None:
    call = corpus_call()
    app = app_for(call, slots=1, clock_factory=ManualClock)
    async with running_app(app) as port:
        first = asyncio.create_task(play_twilio_call(
            f"ws://127.0.0.1:{port}/ws", mulaw(call.caller[:16000]), auth_token=TOKEN,
            before_media=lambda: asyncio.sleep(0)))
        answer, code, reason = await full_house(port, TOKEN)
        res = await first
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as h:
            metrics = (await h.get("/metrics")).text
            for _ in range(100):  # the call over (its pipeline ends after the close) ...
                if "moshi_twilio_calls_active 0" in (await h.get("/metrics")).text:
                    break
                await asyncio.sleep(0.05)
            # ... the slot is free again.
            after = await h.post("/", data=CALL, headers=signed(f"http://127.0.0.1:{port}/",
                                                                CALL))
    assert '<Reject reason="busy" />' in answer
    assert code == 1013 and reason.startswith("busy")
    assert res.close_code == 1000
    assert 'moshi_twilio_rejected_busy_total{where="webhook"} 1' in metrics
    assert 'moshi_twilio_rejected_busy_total{where="stream"} 1' in metrics
    assert "<Connect>" in after.text


class _FullEngine(ScriptedTransport):
    """A Moshi server with no free slot (the gate let the stream in, the engine did not)."""

    async def open(self, call_id: str) -> str:
        raise ServerBusyError("server busy: no free slot")


async def test_a_full_engine_behind_the_gate_closes_the_stream_1013_busy() -> None:
    app = create_app(adapter_factory=lambda: MoshiAdapter(MoshiSettings(),
                                                          transport=_FullEngine()),
                     prewarm=False, auth_token=TOKEN)
    async with running_app(app) as port:
        res = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(np.zeros(8000)),
                                     auth_token=TOKEN)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as h:
            metrics = (await h.get("/metrics")).text
    assert res.close_code == 1013 and res.close_reason.startswith("busy")
    assert 'moshi_twilio_rejected_busy_total{where="stream"} 1' in metrics


async def test_a_socket_that_is_not_twilio_is_closed_1008() -> None:
    app = app_for(insecure_no_signature=True, auth_token=None)
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
    dev_checkpoint: object, tmp_path: Path,
) -> None:
    call = corpus_call()
    token_file = tmp_path / "twilio-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with pipecat_twilio_cli("--checkpoint", "dev", "--slots", "1",
                            "--twilio-auth-token-file", str(token_file)) as port:
        # One call up (signed as Twilio signs it) on one slot: a second caller hears busy,
        # and a stream that comes anyway is closed 1013 with a reason that says so.
        res, (answer, code, reason) = await asyncio.gather(
            play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(call.caller[:48000]),
                             auth_token=TOKEN),
            full_house(port, TOKEN))
    assert '<Reject reason="busy" />' in answer
    assert code == 1013 and reason.startswith("busy")
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
    app = app_for(call, on_service=services.append, clock_factory=ManualClock)
    async with running_app(app) as port:
        res = await play_twilio_call(f"ws://127.0.0.1:{port}/ws", mulaw(call.caller),
                                     auth_token=TOKEN)
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
