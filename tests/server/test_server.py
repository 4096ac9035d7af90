"""`voice-server-moshi serve` with the dev checkpoint on CPU, driven like Kyutai's clients.

Clients are raw ``websockets`` connections sending ``0x01`` + Ogg/Opus from
``sphn.OpusStreamWriter`` (what Kyutai's client does), not this project's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import sphn
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voice_server_moshi.engine.call_sampling import GREEDY
from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
from voice_server_moshi.engine.core import EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.server.app import BatchedServer, ServerConfig
from voice_server_moshi.testing.serving import serving

FRAME = 1920


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("server") / "dev"
    make_dev_checkpoint(d)
    return str(d)


def tone(i: int, n: int) -> list[np.ndarray]:
    t = np.arange(n * FRAME) / 24000
    x = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
    return [x[k * FRAME:(k + 1) * FRAME] for k in range(n)]


class Client:
    """A Kyutai-style client: handshake, then Opus pages up, Opus pages and text down."""

    def __init__(self, url: str, **kw: object) -> None:
        self.url = url
        self.kw = kw
        self.audio_msgs = 0
        self.samples = 0
        self.texts: list[str] = []
        self.errors: list[str] = []
        self.first: bytes | None = None
        self.metadata: object = None
        self.ws: websockets.ClientConnection | None = None
        self._reader = sphn.OpusStreamReader(24000)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, compression=None, proxy=None,
                                           open_timeout=30, **self.kw)  # type: ignore[arg-type]
        self.first = bytes(await asyncio.wait_for(self.ws.recv(), 30))
        if self.first[:1] == b"\x00":
            self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for m in self.ws:
                assert isinstance(m, bytes)
                if m[0] == 1:
                    self.audio_msgs += 1
                    self._changed.set()
                    self.samples += self._reader.append_bytes(m[1:]).shape[-1]
                elif m[0] == 2:
                    self.texts.append(m[1:].decode())
                elif m[0] == 4:
                    self.metadata = json.loads(m[1:])
                elif m[0] == 5:
                    self.errors.append(m[1:].decode())
        except ConnectionClosed:
            pass

    async def talk(self, frames: list[np.ndarray], pace_s: float = 0.08) -> None:
        assert self.ws is not None
        writer = sphn.OpusStreamWriter(24000)
        for f in frames:
            data = writer.append_pcm(f)
            if len(data):
                await self.ws.send(b"\x01" + bytes(data))
            await asyncio.sleep(pace_s)

    async def wait_audio(self, n: int, limit_s: float = 60) -> None:
        async def until() -> None:
            while self.audio_msgs < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), limit_s)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


# -- the real command, as a subprocess ----------------------------------------------------


@pytest.fixture(scope="module")
def served(ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log_path = tmp_path_factory.mktemp("serve") / "stderr.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_server_moshi.cli", "serve", "--port", "0",
         "--slots", "4", "--checkpoint", ckpt, "--device", "cpu", "--greedy",
         # Count-exact tests: on a loaded machine the engine may fall behind real time, and
         # an overrun or trimmed input frame would read as a lost output frame. Trimming
         # and overruns have their own tests (tests/engine/test_backlog_trim.py).
         "--queue-frames", "100", "--trim-after-ms", "0"],
        env=env, stdout=subprocess.PIPE, stderr=log_file, text=True,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=120)
    if not line or not line[0]:
        proc.kill()
        log_file.close()
        pytest.fail("serve did not print its listening line within 120 s; stderr:\n"
                    + log_path.read_text()[-3000:])
    info = json.loads(line[0])
    assert info["event"] == "listening" and info["slots"] == 4
    try:
        yield "127.0.0.1", int(info["port"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


@pytest.mark.slow
async def test_four_calls_at_once_and_a_fifth_is_refused(served: tuple[str, int]) -> None:
    host, port = served
    base = f"http://{host}:{port}"
    url = f"ws://{host}:{port}/api/chat"
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        assert (await http.get("/healthz")).status_code == 200
        r = await http.get("/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True

        n = 20
        clients = [Client(url) for _ in range(4)]
        await asyncio.gather(*(c.connect() for c in clients))
        for c in clients:
            assert c.first == b"\x00" + struct.pack("<II", 0, 0)  # Rust-style 9 bytes
        talks = [asyncio.create_task(c.talk(tone(i, n))) for i, c in enumerate(clients)]

        # Full: /readyz and /capacity say so, and a fifth call is refused, not queued.
        cap = (await http.get("/capacity")).json()
        assert cap.pop("persona")["prompts"] is False  # a Moshi checkpoint (ADR 0130)
        assert cap == {"slots": 4, "free_slots": 0, "active_slots": 4, "ready": True}
        r = await http.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "no free slot"
        fifth = await websockets.connect(url, proxy=None, open_timeout=30)
        first = await asyncio.wait_for(fifth.recv(), 30)
        assert isinstance(first, bytes) and first[:1] == b"\x05"
        assert "server busy" in first[1:].decode()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(fifth.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

        await asyncio.gather(*talks)
        # One audio frame back per input frame after the first, for every call.
        await asyncio.gather(*(c.wait_audio(n - 1) for c in clients))
        await asyncio.sleep(0.5)
        assert [c.audio_msgs for c in clients] == [n - 1] * 4
        assert all(c.samples > 0 and not c.errors for c in clients)
        assert all(isinstance(c.metadata, dict) for c in clients)
        await asyncio.gather(*(c.close() for c in clients))

        for _ in range(600):  # the server frees slots as it sees the closes
            if (await http.get("/capacity")).json()["free_slots"] == 4:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert "moshi_server_refused_busy_total 1" in metrics
        assert 'moshi_engine_tick_seconds_bucket{le="+Inf"}' in metrics
        # The rows the last tick stepped (the four calls, packed) and the moves so far.
        assert "moshi_engine_row_moves_total" in metrics
        width = [ln for ln in metrics.splitlines() if ln.startswith("moshi_engine_batch_width")]
        assert width and 1 <= float(width[0].split()[1]) <= 4
        # Tick quantiles over the recent ticks, finer than the histogram's buckets.
        q = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
             if ln.startswith("moshi_engine_tick_recent_")}
        assert 0 < q["moshi_engine_tick_recent_p50_seconds"] <= q[
            "moshi_engine_tick_recent_p99_seconds"]
        # The heap was frozen when the engine started; collector pauses are timed (ADR 0150).
        frozen = [ln for ln in metrics.splitlines()
                  if ln.startswith("moshi_process_gc_frozen_objects ")]
        assert frozen and float(frozen[0].split()[1]) > 1000
        assert 'moshi_process_gc_pause_max_seconds{generation="2"}' in metrics


# -- in-process: auth, limits, bad input --------------------------------------------------


@pytest.fixture
async def inproc(ckpt: str) -> AsyncIterator[BatchedServer]:
    async with serving(load_models(ckpt, device="cpu", dtype="float32"),
                       EngineConfig(slots=2, sampling=GREEDY),
                       ServerConfig(port=0, auth_token="s3cret", max_message_bytes=4096)) as srv:
        yield srv


async def test_auth_endpoints_and_limits(inproc: BatchedServer) -> None:
    port = inproc.port
    url = f"ws://127.0.0.1:{port}/api/chat"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
        assert (await http.get("/nope")).status_code == 404
        assert (await http.get("/metrics")).status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "# TYPE moshi_engine_tick_seconds histogram" in ok.text
    with pytest.raises(InvalidStatus) as exc:
        await websockets.connect(url, proxy=None)
    assert exc.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        await websockets.connect(url, proxy=None,
                                 additional_headers={"Authorization": "Bearer wrong"})

    good = Client(url, additional_headers={"Authorization": "Bearer s3cret"})
    await good.connect()
    assert good.first is not None and good.first[:1] == b"\x00"
    assert good.ws is not None
    # A malformed message gets a 0x05 and the call goes on.
    await good.ws.send(b"")
    await good.talk(tone(0, 4), pace_s=0.02)
    await good.wait_audio(3)
    assert any("malformed" in e for e in good.errors)
    # Over the size limit: websockets closes with 1009 (message too big).
    await good.ws.send(b"\x01" + b"\x00" * 8192)
    await asyncio.wait_for(good._task, 10)  # type: ignore[arg-type]
    assert good.ws.close_code == 1009
    assert inproc.engine.free_slots() in (1, 2)  # released once the handler finishes

    # ?auth_token= works for browsers; garbage Opus gets an error and a 1007 close.
    bad = Client(f"{url}?auth_token=s3cret")
    await bad.connect()
    assert bad.ws is not None
    await bad.ws.send(b"\x01" + b"this is not an ogg page at all" * 4)
    await asyncio.wait_for(bad._task, 10)  # type: ignore[arg-type]
    assert bad.ws.close_code == 1007 and any("Ogg/Opus" in e for e in bad.errors)


@pytest.mark.slow
async def test_this_projects_remote_transport_works_against_serve(
    served: tuple[str, int],
) -> None:
    from voice_server_moshi.moshi.remote import RemoteTransport
    from voice_server_moshi.moshi.settings import MoshiSettings
    from voice_server_moshi.moshi.transport import AgentAudio

    host, port = served
    t = RemoteTransport(MoshiSettings(url=f"ws://{host}:{port}/api/chat"))
    await t.open("remote-1")
    assert t.handshake is not None and t.handshake.protocol_version == 0
    assert isinstance(t.metadata, dict | None)
    n = 10
    samples = 0

    async def consume() -> None:
        nonlocal samples
        async for ev in t.receive():
            if isinstance(ev, AgentAudio):
                samples += len(ev.pcm)
                if samples >= (n - 2) * FRAME:  # Opus decoding may hold back a little
                    return

    task = asyncio.create_task(consume())
    for f in tone(5, n):
        await t.send_frame(f)
        await asyncio.sleep(0.08)
    await asyncio.wait_for(task, 60)
    await t.close()
    assert samples >= (n - 2) * FRAME


def test_serve_refuses_bad_flags_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from voice_server_moshi.server.cli import main

    assert main(["--slots", "0", "--checkpoint", "dev"]) == 2
    assert "slots must be in 1..1024" in capsys.readouterr().err
    assert main(["--checkpoint", "no-such-thing", "--device", "cpu"]) == 2
    assert "could not load checkpoint 'no-such-thing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--port", "not-a-number"])


async def test_remote_transport_reports_a_full_serve_as_server_busy(
    inproc: BatchedServer,
) -> None:
    from voice_server_moshi.errors import ServerBusyError
    from voice_server_moshi.moshi.remote import RemoteTransport
    from voice_server_moshi.moshi.settings import MoshiSettings

    settings = MoshiSettings(
        url=f"ws://127.0.0.1:{inproc.port}/api/chat", auth_token="s3cret", connect_timeout_s=30
    )
    held = [RemoteTransport(settings) for _ in range(2)]
    for i, t in enumerate(held):
        await t.open(f"hold-{i}")
    third = RemoteTransport(settings)
    with pytest.raises(ServerBusyError, match="server busy"):
        await third.open("third")
    for t in held:
        await t.close()


async def test_operator_closes_one_call_then_all_and_the_server_goes_on(
    inproc: BatchedServer,
) -> None:
    url = f"ws://127.0.0.1:{inproc.port}/api/chat?auth_token=s3cret"
    a, b = Client(url), Client(url)
    await a.connect()
    await b.connect()
    assert len(inproc.call_ids) == 2
    assert await inproc.close_call("srv-no-such-call") == 0

    first = inproc.call_ids[0]
    assert await inproc.close_call(first, code=1001, reason="draining") == 1
    tasks = [c._task for c in (a, b) if c._task is not None]
    done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    closed, survivor = (a, b) if a._task in done else (b, a)
    assert closed.ws is not None and closed.ws.close_code == 1001
    assert closed.ws.close_reason == "draining"
    await survivor.talk(tone(1, 4), pace_s=0.02)
    await survivor.wait_audio(3)  # the other call goes on
    for _ in range(100):  # the handler frees the slot once it sees its close
        if first not in inproc.call_ids:
            break
        await asyncio.sleep(0.02)
    assert first not in inproc.call_ids

    assert await inproc.close_call(code=1001) == 1  # all that are left
    assert survivor._task is not None
    await asyncio.wait_for(survivor._task, 10)
    assert survivor.ws is not None and survivor.ws.close_code == 1001
    assert survivor.ws.close_reason == "closed by the operator"

    # Still serving: a new call is admitted.
    c = Client(url)
    await c.connect()
    assert c.first is not None and c.first[:1] == b"\x00"
    await c.close()


async def test_a_call_whose_engine_stops_gets_the_error_and_close_1011(
    inproc: BatchedServer,
) -> None:
    c = Client(f"ws://127.0.0.1:{inproc.port}/api/chat?auth_token=s3cret")
    await c.connect()
    talking = asyncio.create_task(c.talk(tone(2, 40), pace_s=0.02))
    await c.wait_audio(3)
    await asyncio.to_thread(inproc.engine.stop, "engine stopped under the call")
    assert c._task is not None
    await asyncio.wait_for(c._task, 10)
    talking.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
        await talking
    assert c.errors == ["engine stopped under the call"]
    assert c.ws is not None and c.ws.close_code == 1011
