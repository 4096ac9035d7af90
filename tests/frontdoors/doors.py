"""Start each front door the way an operator does (its command line, port 0) and drive it
with a raw Kyutai-protocol client (``websockets`` + ``sphn`` Opus, like Kyutai's own)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import sphn
import websockets
from websockets.exceptions import ConnectionClosed

from voice_server_moshi.audio.resample import Resampler
from voice_server_moshi.audio.wavio import read_wav

FRAME = 1920
#: Every door: CPU, greedy by default, deep input queues and no trimming (a slow shared
#: CPU must not drop a frame), a short first-audio timeout (the limits test waits for it).
COMMON = ["--port", "0", "--device", "cpu", "--greedy", "--queue-frames", "100",
          "--trim-after-ms", "0", "--first-audio-timeout-s", "3"]
#: The default model: the dev checkpoint and the dev STT.
DEV_MODEL = ["--checkpoint", "dev", "--stt", "dev"]
STATIC_PAGE = "<!doctype html><title>a web client</title>"
DOORS: dict[str, list[str]] = {
    "serve": ["serve", "--slots", "2"],
    "serve --ingress-workers 2": ["serve", "--slots", "2", "--ingress-workers", "2"],
    "cluster": ["cluster", "--replicas", "2", "--slots", "1", "--health-check-period-s", "1"],
}


@dataclass
class Door:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/chat"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def door_id(name: str) -> str:
    """A door's short test id (``serve-workers`` for ``serve --ingress-workers 2``)."""
    return name.replace(" --ingress-workers 2", "-workers")


@contextlib.contextmanager
def running(name: str, log_dir: Path, start_limit_s: float = 300,
            model: list[str] | None = None, extra: list[str] | None = None) -> Iterator[Door]:
    """Run door ``name`` until the block ends, then stop it as Ctrl-C does (exit 0).
    ``model``: the model flags (default :data:`DEV_MODEL`); ``extra``: more flags, last
    (so they override the door's, e.g. ``--replicas 1``). The cluster is skipped without
    Ray Serve (the light install)."""
    if name == "cluster":
        pytest.importorskip("ray.serve")
    log_path = log_dir / "stderr.log"
    static = log_dir / "static"  # a web client beside the API (--static)
    static.mkdir()
    (static / "index.html").write_text(STATIC_PAGE)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voice_server_moshi.cli", *DOORS[name], *COMMON,
             *(DEV_MODEL if model is None else model), "--static", str(static),
             *(extra or [])],
            env=dict(os.environ, HF_HUB_OFFLINE="1"), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log_file, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout=start_limit_s)
        try:
            if not line or not line[0]:
                raise AssertionError(f"{name} did not listen within {start_limit_s} s:\n"
                                     + log_path.read_text()[-3000:])
            yield Door(name, int(json.loads(line[0])["port"]))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                assert proc.wait(timeout=90) == 0, log_path.read_text()[-3000:]
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def tone(i: int, n: int) -> list[np.ndarray]:
    t = np.arange(n * FRAME) / 24000
    x = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
    return [x[k * FRAME:(k + 1) * FRAME] for k in range(n)]


def clip_frames(path: Path, lead_s: float = 0.2) -> list[np.ndarray]:
    """A bundled clip at 24 kHz as 80 ms frames, after ``lead_s`` of silence."""
    clip = read_wav(path)
    rs = Resampler(clip.sample_rate, 24000)
    x = np.concatenate([rs.process(clip.samples[:, 0].astype(np.float32)), rs.flush()])
    pcm = np.concatenate([np.zeros(int(lead_s * 24000), np.float32), x.astype(np.float32)])
    n = len(pcm) // FRAME
    return [pcm[k * FRAME:(k + 1) * FRAME] for k in range(n)]


@dataclass
class Client:
    """One call: handshake and metadata, Opus up at 80 ms, everything down recorded."""

    url: str
    msgs: list[tuple[float, int, bytes]] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)
    first: bytes = b""
    close_code: int | None = None
    ws: websockets.ClientConnection | None = None
    _reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, proxy=None, compression=None,
                                           open_timeout=60)
        self.first = bytes(await asyncio.wait_for(self.ws.recv(), 60))
        if self.first[:1] == b"\x00":
            meta = bytes(await asyncio.wait_for(self.ws.recv(), 10))
            assert meta[:1] == b"\x04"
            self.metadata = json.loads(meta[1:])
        else:
            self.msgs.append((time.monotonic(), self.first[0], self.first[1:]))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for m in self.ws:
                assert isinstance(m, bytes)
                self.msgs.append((time.monotonic(), m[0], m[1:]))
        self.close_code = self.ws.close_code

    def of(self, kind: int) -> list[bytes]:
        return [p for _, k, p in self.msgs if k == kind]

    def errors(self) -> list[str]:
        return [p.decode() for p in self.of(5)]

    def updates(self) -> list[tuple[str, str]]:
        return [(u["id"], u["status"]) for u in (json.loads(p) for p in self.of(0x40))]

    async def until(self, pred: Callable[[], bool], limit_s: float = 60.0) -> None:
        async with asyncio.timeout(limit_s):
            while not pred():  # noqa: ASYNC110 (a bounded poll)
                await asyncio.sleep(0.02)

    async def talk(self, frames: list[np.ndarray],
                   extra: dict[int, list[bytes]] | None = None) -> None:
        """Send ``frames`` at 80 ms (never more than 3 ahead of the agent: a slow shared
        CPU must not overrun the input queue); ``extra[k]``: messages before frame k."""
        assert self.ws is not None
        writer = sphn.OpusStreamWriter(24000)
        for k, f in enumerate(frames):
            for m in (extra or {}).get(k, []):
                await self.ws.send(m)
            data = writer.append_pcm(f)
            if len(data):
                await self.ws.send(b"\x01" + bytes(data))
            await asyncio.sleep(0.08)
            await self.until(lambda k=k: len(self.of(1)) >= k - 3)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.closed(10)

    async def closed(self, limit_s: float) -> None:
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=limit_s)


async def idle(door: Door, limit_s: float = 120) -> dict[str, object]:
    """``/capacity`` once every slot (two in all) is free and the door says it is ready."""
    async with httpx.AsyncClient(base_url=door.http, trust_env=False, timeout=10) as http:
        async with asyncio.timeout(limit_s):
            while True:
                cap = (await http.get("/capacity")).json()
                if cap["ready"] and cap["slots"] == 2 and cap["free_slots"] == 2:
                    return dict(cap)
                await asyncio.sleep(0.1)
