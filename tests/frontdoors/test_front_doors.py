"""One set of Kyutai-protocol client tests for every front door (ADR 0110): ``serve``,
``serve --ingress-workers 2`` and ``cluster`` (two replicas of one slot on a local Ray
cluster) get the same messages and give the same answers and close codes: say text,
cancel, say audio, caller transcripts, per-call sampling with seeds, the call limits and
a full server's refusal, plus the HTTP endpoints.

Each door is started once for the module (the cluster's start is the slow part), from
its command line, with the dev checkpoint and the dev STT on CPU."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import sphn

from voice_server_moshi.bundled import bundled_clip_dir

from .doors import (
    DOORS,
    STATIC_PAGE,
    Client,
    Door,
    clip_frames,
    door_id,
    idle,
    running,
    tone,
)

pytestmark = pytest.mark.slow

TEXT = "hello there, this is a test"


@pytest.fixture(scope="module", params=list(DOORS), ids=door_id)
def door(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    with running(request.param, tmp_path_factory.mktemp("door")) as d:
        yield d


async def test_http_endpoints_and_metadata(door: Door) -> None:
    await idle(door)
    async with httpx.AsyncClient(base_url=door.http, trust_env=False, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200 and "moshi_engine_" in metrics.text
        page = await http.get("/")
        assert page.status_code == 200 and page.text == STATIC_PAGE
        assert (await http.get("/nothing-here")).status_code == 404
    c = Client(door.url)
    await c.connect()
    assert c.first == b"\x00" + bytes(8)
    md = c.metadata
    assert md["steering"] is True and md["caller_transcript"] is True
    assert md["server"] == "voice-server-moshi" and md["per_call_sampling"] is True
    assert md["text_temperature"] == 0.0 and "build_info" in md  # --greedy's default
    assert isinstance(md["text_seed"], int) and isinstance(md["audio_seed"], int)
    assert str(md["lm_model_file"]).endswith(".safetensors")
    await c.close()
    assert c.close_code == 1000


async def test_say_text_cancel_and_say_audio(door: Door) -> None:
    await idle(door)
    c = Client(door.url)
    await c.connect()
    assert c.ws is not None
    sender = asyncio.create_task(c.talk(tone(2, 250)))
    await c.until(lambda: len(c.of(1)) >= 3)
    said_from = len(c.msgs)
    await c.ws.send(b"\x02" + TEXT.encode())
    await c.until(lambda: ("say-1", "finished") in c.updates())
    words = "".join(p.decode() for _, k, p in c.msgs[said_from:] if k == 2)
    assert TEXT.replace(" ", "") in words.replace(" ", "")
    await c.ws.send(b"\x02" + b"one two three four five six seven eight nine ten")
    await c.until(lambda: ("say-2", "started") in c.updates())
    await c.ws.send(b"\x42")  # cancel (and flush)
    await c.until(lambda: ("say-2", "cancelled") in c.updates())
    await c.ws.send(b"\x41\x05\x00")  # a malformed say-audio: answered, the call goes on
    await c.ws.send(b"\x02   ")  # nothing to say
    clip = b"{}" + struct.pack("<h", 1000) * 6000  # 0.25 s of int16 at 24 kHz
    await c.ws.send(b"\x41" + struct.pack("<I", 2) + clip)
    await c.until(lambda: ("say-4", "finished") in c.updates())
    sender.cancel()
    await c.close()
    assert c.updates() == [
        ("say-1", "queued"), ("say-1", "started"), ("say-1", "finished"),
        ("say-2", "queued"), ("say-2", "started"), ("say-2", "cancelled"),
        ("say-3", "failed"),
        ("say-4", "queued"), ("say-4", "started"), ("say-4", "finished")]
    errors = c.errors()
    assert len(errors) == 1 and "malformed message" in errors[0] and "0x41" in errors[0]
    assert c.close_code == 1000


async def test_caller_transcripts(door: Door) -> None:
    await idle(door)
    frames = clip_frames(bundled_clip_dir() / "u2.wav")  # before the first-audio clock runs
    c = Client(door.url)
    await c.connect()
    assert c.ws is not None
    await c.talk(frames)
    await c.ws.send(b"\x52")  # the caller's audio has ended: last words, then 0x53
    await c.until(lambda: bool(c.of(0x53)))
    await c.close()
    pieces = [json.loads(p) for p in c.of(0x50)]
    assert len(pieces) >= 2 and all(p["text"] and p["t_ms"] > 0 for p in pieces)
    kinds = [k for _, k, _ in c.msgs if k in (0x50, 0x51, 0x53)]
    assert kinds.count(0x53) == 1 and kinds[-1] == 0x53
    assert not c.errors() and c.close_code == 1000


async def test_per_call_sampling_with_seeds(door: Door) -> None:
    await idle(door)
    query = "?text_temperature=0.9&audio_temperature=0.9&text_seed=11&audio_seed=12"
    runs = []
    for _ in range(2):  # the same seeds and input: the same call, on any slot or replica
        c = Client(door.url + query + "&email=someone%40example.com")
        await c.connect()
        md = c.metadata
        assert (md["text_temperature"], md["audio_temperature"]) == (0.9, 0.9)
        assert (md["text_seed"], md["audio_seed"]) == (11, 12)
        await c.talk(tone(3, 15))
        await c.until(lambda c=c: len(c.of(1)) >= 14)
        await c.close()
        runs.append((c.of(1)[:14], c.of(2)))
        await idle(door)
    assert runs[0] == runs[1]
    bad = Client(door.url + "?text_topk=0&text_temperature=9")
    await bad.connect()
    assert bad.first[:1] == b"\x05"
    assert bad.errors() == ["bad request: text_temperature must be in [0, 2], got 9.0; "
                            "text_topk must be in [1, 500], got 0"]
    await bad.closed(10)
    assert bad.close_code == 1008


async def test_a_persona_to_a_moshi_checkpoint_is_refused(door: Door) -> None:
    """The dev checkpoint is Moshi, not PersonaPlex: NVIDIA's persona parameters are
    refused with the reason before a slot is taken, never silently ignored (ADR 0130)."""
    await idle(door)
    async with httpx.AsyncClient(base_url=door.http, trust_env=False, timeout=10) as http:
        persona = (await http.get("/capacity")).json()["persona"]
    assert persona["prompts"] is False and persona["family"] == "moshi"
    for query, what in (("?text_prompt=You%20enjoy%20having%20a%20good%20conversation.",
                         "a persona"), ("?voice_prompt=NATF2.pt", "a voice prompt")):
        c = Client(door.url + query)
        await c.connect()
        await c.closed(10)
        assert c.first[:1] == b"\x05" and c.close_code == 1008
        assert c.errors() == [f"bad request: {what} was sent, but checkpoint dev is a moshi "
                              "model, not trained for persona or voice prompts: use a "
                              "PersonaPlex checkpoint (e.g. nvidia/personaplex-7b-v1, or "
                              "dev-personaplex)"]


async def test_call_limits(door: Door) -> None:
    await idle(door)
    silent, garbled = Client(door.url), Client(door.url)
    await asyncio.gather(silent.connect(), garbled.connect())
    assert garbled.ws is not None
    await garbled.ws.send(b"\x01" + b"this is not an ogg page at all" * 4)
    await asyncio.gather(silent.closed(15), garbled.closed(15))
    assert silent.close_code == 1008 and silent.errors() == [
        "no audio within 3 s of the handshake; closing the call"]
    assert garbled.close_code == 1007
    assert len(garbled.errors()) == 1 and "invalid Ogg/Opus audio" in garbled.errors()[0]
    await idle(door)
    fast = Client(door.url)
    await fast.connect()
    assert fast.ws is not None
    writer = sphn.OpusStreamWriter(24000)
    for _ in range(60):  # 4.8 s of audio at once: refused from its Ogg headers
        data = writer.append_pcm(np.zeros(1920, np.float32))
        if len(data) and fast.close_code is None:
            try:
                await fast.ws.send(b"\x01" + bytes(data))
            except Exception:
                break
    await fast.closed(15)
    assert fast.close_code == 1008
    assert any("faster than real time" in e for e in fast.errors()), fast.errors()


async def test_a_full_server_refuses_a_call(door: Door) -> None:
    await idle(door)
    calls = [Client(door.url), Client(door.url)]
    for c in calls:  # one at a time: each slot is taken before the next call comes
        await c.connect()
    talks = [asyncio.create_task(c.talk(tone(i, 40))) for i, c in enumerate(calls)]
    async with httpx.AsyncClient(base_url=door.http, trust_env=False, timeout=10) as http:
        async with asyncio.timeout(30):
            while (await http.get("/capacity")).json()["free_slots"] != 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 503
        third = Client(door.url)
        await third.connect()
        await third.closed(10)
        assert third.first[:1] == b"\x05" and third.errors()[0].startswith("server busy: ")
        assert third.close_code == 1013
        metrics = (await http.get("/metrics")).text
        assert "moshi_server_refused_busy" in metrics
    for t in talks:
        t.cancel()
    await asyncio.gather(*(c.close() for c in calls))
    assert all(c.close_code == 1000 and not c.errors() for c in calls)
