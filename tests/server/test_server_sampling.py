"""`serve` for Kyutai's own clients: Rust-schema metadata with the call's real settings,
per-call sampling and seeds over the protocol, refusals of bad values, and --static."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import sphn
import websockets
from websockets.exceptions import ConnectionClosed

from voice_server_moshi.engine.call_sampling import GREEDY, CallSampling
from voice_server_moshi.engine.checkpoints import dev_checkpoint_dir
from voice_server_moshi.engine.core import Engine, EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.server.app import BatchedServer, ServerConfig
from voice_server_moshi.server.limits import CallLimits
from voice_server_moshi.server.metadata import BUILD_INFO_FIELDS

FRAME = 1920
N_FRAMES = 24

#: Kyutai's web client's zod schema for the 0x04 metadata (useServerInfo.ts): every field
#: and its type. A value of another type makes the client drop the whole object.
CLIENT_SCHEMA: dict[str, type] = {
    "text_temperature": float, "text_topk": int, "audio_temperature": float,
    "audio_topk": int, "pad_mult": float, "repetition_penalty_context": int,
    "repetition_penalty": float, "lm_model_file": str, "instance_name": str,
    "build_info": dict,
}
CLIENT_BUILD_INFO = ("build_timestamp", "build_date", "git_branch", "git_timestamp",
                     "git_date", "git_hash", "git_describe", "rustc_host_triple",
                     "rustc_version", "cargo_target_triple")


def voice(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(N_FRAMES * FRAME) / 24000
    x = 0.3 * np.sin(2 * np.pi * (170 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return [x[k * FRAME:(k + 1) * FRAME] for k in range(N_FRAMES)]


async def call(url: str, frames: list[np.ndarray]) -> tuple[list[str], dict[str, object]]:
    """One Kyutai-style call: send every frame, read until all outputs came back."""
    async with websockets.connect(url, compression=None, proxy=None, open_timeout=60) as ws:
        first = bytes(await asyncio.wait_for(ws.recv(), 60))
        assert first[:1] == b"\x00", first
        texts: list[str] = []
        meta: dict[str, object] = {}
        audio = 0
        writer = sphn.OpusStreamWriter(24000)
        for f in frames:
            data = writer.append_pcm(f)
            if len(data):
                await ws.send(b"\x01" + bytes(data))
        while audio < len(frames) - 1:  # one output per input frame after the first
            m = await asyncio.wait_for(ws.recv(), 120)
            assert isinstance(m, bytes)
            if m[0] == 1:
                audio += 1
            elif m[0] == 2:
                texts.append(m[1:].decode())
            elif m[0] == 4:
                meta = json.loads(m[1:])
            elif m[0] == 5:
                raise AssertionError(f"server error: {m[1:].decode()}")
        with pytest.raises((TimeoutError, ConnectionClosed)):  # nothing more is coming
            while True:
                m = await asyncio.wait_for(ws.recv(), 1.0)
                if isinstance(m, bytes) and m[0] == 2:
                    texts.append(m[1:].decode())
        return texts, meta


async def start(sampling: CallSampling | None, per_call: bool = True, slots: int = 3,
                static: str | None = None) -> BatchedServer:
    models = load_models(str(dev_checkpoint_dir()), device="cpu", dtype="float32")
    # Input-clocked and never dropping: the stream depends on the input, not on timing.
    # No backlog trimming either (ADR 0065): this client is ahead of real time on purpose.
    eng = Engine(models, EngineConfig(slots=slots, fill_after_ticks=None, queue_frames=1000,
                                      trim_window_ticks=None, sampling=sampling,
                                      per_call_sampling=per_call))
    eng.start()
    # The client sends its whole input at once and then only listens (the stream must
    # depend on the input alone): the real-time limits of ADR 0065 are lifted for it.
    limits = CallLimits(no_input_s=None, max_audio_ahead_s=60.0)
    srv = BatchedServer(eng, ServerConfig(port=0, static_dir=static, limits=limits))
    await srv.start()
    return srv


async def stop(srv: BatchedServer) -> None:
    await srv.close()
    srv.engine.stop()


@pytest.fixture
async def server() -> AsyncIterator[BatchedServer]:
    srv = await start(None)
    try:
        yield srv
    finally:
        await stop(srv)


def url(srv: BatchedServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{srv.port}/api/chat" + (f"?{query}" if query else "")


async def test_metadata_is_kyutais_schema_with_the_calls_settings(server: BatchedServer) -> None:
    q = ("text_temperature=0.5&text_topk=40&audio_temperature=0.6&audio_topk=100&pad_mult=1.5"
         "&repetition_penalty=1.2&repetition_penalty_context=32&text_seed=5&audio_seed=6")
    async with websockets.connect(url(server, q), proxy=None, open_timeout=60) as ws:
        assert bytes(await ws.recv())[:1] == b"\x00"
        m = bytes(await ws.recv())
    assert m[:1] == b"\x04"
    meta = json.loads(m[1:])
    for key, typ in CLIENT_SCHEMA.items():
        assert key in meta, key
        ok = (int, float) if typ is float else typ
        assert isinstance(meta[key], ok) and not isinstance(meta[key], bool), (key, meta[key])
    assert tuple(BUILD_INFO_FIELDS) == CLIENT_BUILD_INFO
    assert set(meta["build_info"]) == set(CLIENT_BUILD_INFO)
    assert all(isinstance(v, str) and v for v in meta["build_info"].values())
    assert (meta["text_temperature"], meta["text_topk"], meta["audio_temperature"],
            meta["audio_topk"], meta["pad_mult"], meta["repetition_penalty"],
            meta["repetition_penalty_context"], meta["text_seed"], meta["audio_seed"]) == (
        0.5, 40, 0.6, 100, 1.5, 1.2, 32, 5, 6)
    assert meta["instance_name"] == "voice-server-moshi"
    assert meta["lm_model_file"].endswith(".safetensors")
    # Without parameters: the engine's defaults and seeds drawn for this call.
    async with websockets.connect(url(server), proxy=None, open_timeout=60) as ws:
        await ws.recv()
        meta2 = json.loads(bytes(await ws.recv())[1:])
    d = server.engine.default_sampling
    assert (meta2["text_temperature"], meta2["text_topk"]) == (d.text_temperature, d.text_topk)
    assert isinstance(meta2["text_seed"], int) and isinstance(meta2["audio_seed"], int)


@pytest.mark.parametrize(("query", "needle"), [
    ("text_topk=0", "text_topk must be in [1, 500]"),
    ("audio_temperature=hot", "audio_temperature must be a number"),
    ("repetition_penalty=9&text_seed=-3", "repetition_penalty must be in [1, 3]"),
])
async def test_an_invalid_value_is_refused_before_a_slot_is_taken(
        server: BatchedServer, query: str, needle: str) -> None:
    free = server.engine.free_slots()
    async with websockets.connect(url(server, query), proxy=None, open_timeout=60) as ws:
        first = bytes(await asyncio.wait_for(ws.recv(), 30))
        assert first[:1] == b"\x05" and needle in first[1:].decode()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert server.engine.free_slots() == free


@pytest.mark.slow
async def test_same_seeds_same_stream_in_any_batch_and_another_seed_differs(
        server: BatchedServer) -> None:
    seeds = "text_seed=101&audio_seed=202&text_temperature=1.0"
    alone, _ = await call(url(server, seeds), voice(1))
    crowd = await asyncio.gather(
        call(url(server, "text_seed=7&audio_seed=8"), voice(2)),
        call(url(server, seeds), voice(1)),
        call(url(server, "text_seed=999&audio_seed=202&text_temperature=1.0"), voice(1)),
    )
    assert len(alone) > 5
    assert crowd[1][0] == alone
    assert crowd[2][0] != alone


@pytest.mark.slow
async def test_temperature_zero_is_the_greedy_output() -> None:
    greedy_q = "text_temperature=0&audio_temperature=0&text_seed=1&audio_seed=2"
    srv = await start(None)
    try:
        mine, meta = await call(url(srv, greedy_q), voice(3))
    finally:
        await stop(srv)
    ref_srv = await start(GREEDY, per_call=False)
    try:
        ref, _ = await call(url(ref_srv), voice(3))
    finally:
        await stop(ref_srv)
    assert meta["text_temperature"] == 0.0
    assert mine == ref and len(ref) > 0


async def test_static_dir_is_served_at_root_and_the_api_still_works(tmp_path: Path) -> None:
    site = tmp_path / "dist"
    (site / "assets").mkdir(parents=True)
    (site / "index.html").write_text("<!doctype html><title>Moshi</title>")
    (site / "assets" / "index.js").write_text("export {}")
    srv = await start(None, slots=1, static=str(site))
    try:
        base = f"http://127.0.0.1:{srv.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as http:
            r = await http.get("/")
            assert r.status_code == 200 and "Moshi" in r.text
            assert r.headers["content-type"].startswith("text/html")
            r = await http.get("/assets/index.js")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
            assert (await http.get("/../etc/passwd")).status_code == 404
            assert (await http.get("/healthz")).text == "ok\n"
            assert (await http.get("/capacity")).json()["slots"] == 1
        async with websockets.connect(url(srv), proxy=None, open_timeout=60) as ws:
            assert bytes(await ws.recv())[:1] == b"\x00"
    finally:
        await stop(srv)
