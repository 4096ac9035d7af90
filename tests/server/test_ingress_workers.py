"""`serve --ingress-workers 2`: Opus and Kyutai's protocol in two worker processes sharing
the port, the engine (dev checkpoint, CPU) and its PCM data plane in the main process.
Driven by raw Kyutai-style clients, like the single-process server's tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

pytest.importorskip("moshi")

import sphn
import websockets
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log_path = tmp_path_factory.mktemp("split") / "stderr.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--port", "0",
         "--slots", "2", "--checkpoint", "dev", "--device", "cpu", "--greedy",
         "--queue-frames", "100", "--trim-after-ms", "0", "--ingress-workers", "2"],
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE, stderr=log_file,
        text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=180)
    try:
        if not line or not line[0]:
            pytest.fail("serve did not listen within 180 s:\n" + log_path.read_text()[-3000:])
        info = json.loads(line[0])
        assert info["ingress_workers"] == 2
        yield int(info["port"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=60) == 0  # a clean stop, workers included
        finally:
            log_file.close()


async def _call(url: str, n: int) -> tuple[int, list[str]]:
    ws = await websockets.connect(url, proxy=None, compression=None, open_timeout=30)
    assert await ws.recv() == b"\x00" + bytes(8)
    meta = await ws.recv()
    assert isinstance(meta, bytes) and meta[:1] == b"\x04"
    audio, errors = 0, []

    async def read() -> None:
        nonlocal audio
        try:
            async for m in ws:
                assert isinstance(m, bytes)
                audio += m[:1] == b"\x01"
                if m[:1] == b"\x05":
                    errors.append(m[1:].decode())
        except ConnectionClosed:
            pass

    rd = asyncio.create_task(read())
    writer = sphn.OpusStreamWriter(24000)
    t = np.arange(1920) / 24000
    for k in range(n):
        data = writer.append_pcm((0.3 * np.sin(2 * np.pi * (200 + k) * t)).astype(np.float32))
        await ws.send(b"\x01" + bytes(data))
        await asyncio.sleep(0.08)
    for _ in range(1200):
        if audio >= n - 1:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    await ws.close()
    await rd
    return audio, errors


async def test_two_workers_relay_every_frame_and_refuse_when_full(split_server: int) -> None:
    port = split_server
    url = f"ws://127.0.0.1:{port}/api/chat"
    n = 20
    calls = [asyncio.create_task(_call(url, n)) for _ in range(2)]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                                 timeout=10) as http:
        for _ in range(100):
            cap = (await http.get("/capacity")).json()
            if cap["active_slots"] == 2:
                break
            await asyncio.sleep(0.05)
        assert cap == {"slots": 2, "free_slots": 0, "active_slots": 2, "ready": True}
        assert (await http.get("/readyz")).status_code == 503
        third = await websockets.connect(url, proxy=None, open_timeout=30)
        first = await third.recv()
        assert isinstance(first, bytes) and first[:1] == b"\x05"
        assert "server busy" in first[1:].decode()
        with pytest.raises(ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # One agent frame per caller frame after the first, none lost between processes.
        assert await asyncio.gather(*calls) == [(n - 1, []), (n - 1, [])]
        metrics = (await http.get("/metrics")).text
        assert "moshi_server_refused_busy_total 1" in metrics


async def test_workers_apply_a_calls_sampling_and_serves_limits(split_server: int) -> None:
    """The split keeps ``serve``'s per-call sampling (ADR 0080) and call limits (ADR 0065)."""
    url = f"ws://127.0.0.1:{split_server}/api/chat"
    async with websockets.connect(url + "?text_temperature=0.4&text_seed=11&audio_seed=12",
                                  proxy=None, compression=None, open_timeout=30) as ws:
        assert await ws.recv() == b"\x00" + bytes(8)
        meta = await ws.recv()
        assert isinstance(meta, bytes) and meta[:1] == b"\x04"
        md = json.loads(meta[1:])
        assert (md["text_temperature"], md["text_seed"], md["audio_seed"]) == (0.4, 11, 12)
        assert md["audio_temperature"] == 0.0 and "build_info" in md  # --greedy default
        # 4.8 s of audio at once: refused from its Ogg headers (audio ahead of real time).
        writer = sphn.OpusStreamWriter(24000)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(60):
                data = writer.append_pcm(np.zeros(1920, np.float32))
                if len(data):
                    await ws.send(b"\x01" + bytes(data))
        errors = []
        with contextlib.suppress(ConnectionClosed):
            async for m in ws:
                if isinstance(m, bytes) and m[:1] == b"\x05":
                    errors.append(m[1:].decode())
        assert ws.close_code == 1008 and any("faster than real time" in e for e in errors)
    bad = await websockets.connect(url + "?text_topk=0", proxy=None, open_timeout=30)
    first = await bad.recv()
    assert isinstance(first, bytes) and first[:1] == b"\x05"
    assert "text_topk must be in [1, 500]" in first[1:].decode()
