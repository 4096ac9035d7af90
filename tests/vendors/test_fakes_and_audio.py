"""The fakes' own protocol checks, their signal helpers, and the adapters' audio plumbing."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus

from voice_server_moshi.audio import g711
from voice_server_moshi.audio.call_audio import OutputFramer, Transcoder, WireFormat
from voice_server_moshi.formats import AudioFormat
from voice_server_moshi.testing import fake_openai_realtime, fake_phonic
from voice_server_moshi.testing.fakes._signal import SpeechDetector, decode, encode, tone


@pytest.mark.parametrize("enc", ["mulaw", "alaw"])
def test_fake_g711_agrees_with_the_package_codec(enc: str) -> None:
    codes = bytes(range(256))
    assert np.array_equal(decode(codes, enc), g711.decode(codes, enc))  # type: ignore[arg-type]
    # The fake encodes to the nearest code (not G.711's truncation): what matters is that the
    # package decodes it to within one quantization step of the signal.
    x = tone(50, 8000, amplitude=12000)
    back = g711.decode(encode(x, enc), enc).astype(np.int32)  # type: ignore[arg-type]
    assert np.abs(back - x).max() <= 256


def test_speech_detector_times_in_stream_ms() -> None:
    det = SpeechDetector(8000, silence_ms=200)
    quiet = np.zeros(8000 * 300 // 1000, dtype=np.int16)
    loud = tone(400, 8000, amplitude=8000)
    out = det.feed(quiet) + det.feed(loud) + det.feed(quiet)
    assert out == [("start", 300.0), ("stop", 700.0)]


async def test_fakes_refuse_wrong_path_and_credentials() -> None:
    async with fake_openai_realtime(api_key="sk-right") as fake:
        for path, key, status in (("/v1/nope", "sk-right", 404),
                                  ("/v1/realtime", "sk-wrong", 401)):
            with pytest.raises(InvalidStatus) as info:
                await websockets.connect(f"{fake.ws_url}{path}",
                                         additional_headers={"Authorization": f"Bearer {key}"})
            assert info.value.response.status_code == status
        assert fake.handshakes_refused == 1


async def test_phonic_fake_rejects_long_chunks_and_bad_config() -> None:
    async with fake_phonic(api_key=None) as fake:
        url = f"{fake.ws_url}/v1/sts/ws"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "config", "input_format": "mulaw_8000"}))
            assert json.loads(await ws.recv())["type"] == "conversation_created"
            assert json.loads(await ws.recv())["type"] == "ready_to_start_conversation"
            chunk = base64.b64encode(b"\xff" * 400).decode()  # 50 ms of µ-law
            await ws.send(json.dumps({"type": "audio_chunk", "audio": chunk}))
            while (msg := json.loads(await ws.recv()))["type"] == "audio_chunk":
                pass
            assert msg["type"] == "error" and msg["error"]["code"] == "audio_chunk_too_long"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "config", "input_format": "alaw_8000"}))
            msg = json.loads(await ws.recv())
            assert msg["type"] == "error" and "input_format" in msg["param_errors"]
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008


async def test_openai_fake_refuses_truncating_past_the_audio() -> None:
    async with fake_openai_realtime() as fake:
        url = f"{fake.ws_url}/v1/realtime?model=gpt-realtime"
        async with websockets.connect(url, additional_headers={
                "Authorization": "Bearer sk-test"}) as ws:
            await ws.recv()
            await fake.speak(200)
            item = fake.session.state["last_item"]
            await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item,
                                      "content_index": 0, "audio_end_ms": 900}))
            while (msg := json.loads(await ws.recv()))["type"] != "error":
                pass
        assert msg["error"]["param"] == "audio_end_ms"


def test_output_framer_pads_and_clears() -> None:
    framer = OutputFramer(AudioFormat("mulaw", 8000, 20))
    assert framer.push(b"\x01" * 100) == []
    frames = framer.push(b"\x02" * 300)
    assert [len(f) for f in frames] == [160, 160] and framer.pending == 80
    last = framer.flush_padded()
    assert last == b"\x02" * 80 + b"\xff" * 80
    assert framer.flush_padded() is None
    framer.push(b"\x03" * 10)
    assert framer.clear() == 10 and framer.pending == 0


def test_transcoder_passthrough_and_odd_bytes() -> None:
    same = Transcoder(WireFormat("mulaw", 8000), WireFormat("mulaw", 8000))
    assert same.passthrough and same.process(b"abc") == b"abc"
    to_ulaw = Transcoder(WireFormat("pcm16", 8000), WireFormat("mulaw", 8000))
    pcm = tone(20, 8000).astype("<i2").tobytes()
    out = to_ulaw.process(pcm[:101]) + to_ulaw.process(pcm[101:])
    assert out == g711.encode(tone(20, 8000), "mulaw")


def test_transcoder_resamples_with_exact_counts() -> None:
    up = Transcoder(WireFormat("mulaw", 8000), WireFormat("pcm16", 24000))
    n = 0
    for _ in range(10):
        n += len(up.process(g711.encode(tone(20, 8000), "mulaw"))) // 2
    assert n == 10 * 480
    assert len(up.flush()) > 0


@given(st.lists(st.binary(min_size=0, max_size=700), max_size=20))
def test_output_framer_any_chunking(chunks: list[bytes]) -> None:
    framer = OutputFramer(AudioFormat("pcm16", 8000, 20))
    frames = [f for c in chunks for f in framer.push(c)]
    assert all(len(f) == 320 for f in frames)
    data = b"".join(chunks)
    assert b"".join(frames) == data[: len(frames) * 320]
    assert framer.pending == len(data) - len(frames) * 320


@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=12))
def test_transcoder_output_does_not_depend_on_chunking(cuts: list[int]) -> None:
    pcm = tone(200, 8000).astype("<i2").tobytes()
    whole = Transcoder(WireFormat("pcm16", 8000), WireFormat("pcm16", 24000))
    ref = whole.process(pcm) + whole.flush()
    parts = Transcoder(WireFormat("pcm16", 8000), WireFormat("pcm16", 24000))
    out, pos = b"", 0
    for n in cuts:
        out += parts.process(pcm[pos : pos + n])
        pos += n
    out += parts.process(pcm[pos:]) + parts.flush()
    assert out == ref
