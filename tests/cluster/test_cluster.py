"""`voice-server-moshi cluster` on a real local Ray cluster: two engine replicas of two
slots (dev checkpoint, CPU) behind one URL, driven by Kyutai-style clients (raw
``websockets``, ``sphn`` Ogg/Opus). One cluster for the module; the tests run in order and
each leaves two healthy replicas behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("moshi")

import sphn
import websockets
from websockets.exceptions import ConnectionClosed

from .cluster_proc import cluster_process

pytestmark = pytest.mark.slow

FRAME = 1920


@dataclass
class Cluster:
    port: int
    ray_address: str
    proc: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/chat"

    def capacity(self) -> dict[str, object]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/capacity", timeout=10, trust_env=False)
        return dict(r.json())


def tone(i: int, n: int) -> list[np.ndarray]:
    t = np.arange(n * FRAME) / 24000
    x = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
    return [x[k * FRAME:(k + 1) * FRAME] for k in range(n)]


class Client:
    """Kyutai-style: handshake, Opus pages up at 80 ms, Opus pages, text, errors down."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.first = b""
        self.metadata: dict[str, object] = {}
        self.audio = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stop = False

    @property
    def replica(self) -> str:
        return str(self.metadata.get("replica"))

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, proxy=None, compression=None,
                                           open_timeout=60)
        self.first = bytes(await asyncio.wait_for(self.ws.recv(), 60))
        if self.first[:1] == b"\x00":
            meta = bytes(await asyncio.wait_for(self.ws.recv(), 10))
            assert meta[:1] == b"\x04"
            self.metadata = json.loads(meta[1:])
        else:
            self.errors.append(self.first[1:].decode())
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for m in self.ws:
                assert isinstance(m, bytes)
                if m[0] == 1:
                    self.audio += 1
                elif m[0] == 5:
                    self.errors.append(m[1:].decode())
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code

    async def talk(self, n: int) -> int:
        """Send ``n`` frames in real time (fewer if stopped or closed); returns how many."""
        assert self.ws is not None
        writer = sphn.OpusStreamWriter(24000)
        sent = 0
        for f in tone(len(self.url) % 7, n):
            if self._stop or self.closed_at is not None:
                break
            data = writer.append_pcm(f)
            try:
                if len(data):
                    await self.ws.send(b"\x01" + bytes(data))
            except ConnectionClosed:
                break
            sent += 1
            await asyncio.sleep(0.08)
        return sent

    async def wait_audio(self, n: int, limit_s: float = 90) -> None:
        t_end = time.monotonic() + limit_s
        while self.audio < n and time.monotonic() < t_end and self.closed_at is None:  # noqa: ASYNC110 (a bounded poll)
            await asyncio.sleep(0.05)

    async def wait_closed(self, limit_s: float) -> None:
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=limit_s)

    async def close(self) -> None:
        self._stop = True
        if self.ws is not None:
            await self.ws.close()
        await self.wait_closed(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_path = tmp_path_factory.mktemp("cluster") / "stderr.log"
    # Deep input queues and no backlog trimming: on a loaded 2-core machine (a replica
    # being replaced loads its model beside the survivor) the engine may run behind real
    # time, and a dropped or trimmed input frame would read as a lost output frame. The
    # trimming policy has its own tests (tests/engine, tests/server).
    with cluster_process(["--replicas", "2", "--slots", "2", "--checkpoint", "dev",
                          "--device", "cpu", "--port", "0", "--greedy", "--queue-frames",
                          "100", "--trim-after-ms", "0", "--health-check-period-s", "1"],
                         log_path) as (info, proc):
        assert info["replicas"] == 2
        yield Cluster(int(info["port"]), str(info["ray_address"]), proc)


def read_line_in_daemon(proc: subprocess.Popen[str]) -> asyncio.Future[str]:
    """The process's next stdout line. A daemon thread, not ``asyncio.to_thread``: if the
    line never comes, closing the test's loop must not wait on the blocked read (it would
    hang the module's teardown, and with it the cluster's clean stop)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(line))

    threading.Thread(target=read, daemon=True).start()
    return fut


async def wait_replicas(cluster: Cluster, n: int, *, exclude_pid: int | None = None,
                        limit_s: float = 120) -> list[dict[str, object]]:
    t_end = time.monotonic() + limit_s
    reps: list[dict[str, object]] = []
    while time.monotonic() < t_end:
        cap = await asyncio.to_thread(cluster.capacity)
        reps = [r for r in cap["replicas"] if r["ready"] and r["pid"] != exclude_pid]  # type: ignore[attr-defined]
        if len(reps) == n and all(r["free_slots"] == r["slots"] for r in reps):
            return reps
        await asyncio.sleep(0.25)
    raise AssertionError(f"expected {n} idle replicas, got {reps}")


async def test_four_calls_spread_two_and_two_and_a_fifth_is_refused(cluster: Cluster) -> None:
    await wait_replicas(cluster, 2)
    n = 20
    calls = [Client(cluster.url) for _ in range(4)]
    for c in calls:  # one at a time: each lease is placed before the next call comes
        await c.connect()
    assert all(c.first == b"\x00" + bytes(8) for c in calls)
    assert sorted(Counter(c.replica for c in calls).values()) == [2, 2]
    talks = [asyncio.create_task(c.talk(n)) for c in calls]

    for _ in range(40):  # replicas report each slot change at once; allow the hop
        cap = await asyncio.to_thread(cluster.capacity)
        if cap["active_slots"] == 4:
            break
        await asyncio.sleep(0.05)
    assert (cap["slots"], cap["active_slots"], cap["free_slots"]) == (4, 4, 0)
    fifth = Client(cluster.url)
    await fifth.connect()
    assert fifth.first[:1] == b"\x05" and "server busy" in fifth.errors[0]
    await fifth.wait_closed(10)
    assert fifth.close_code == 1013

    assert await asyncio.gather(*talks) == [n] * 4
    await asyncio.gather(*(c.wait_audio(n - 1) for c in calls))
    await asyncio.sleep(0.5)
    assert [c.audio for c in calls] == [n - 1] * 4  # one back per frame after the first
    assert not any(c.errors for c in calls)
    await asyncio.gather(*(c.close() for c in calls))
    metrics = (await asyncio.to_thread(
        httpx.get, f"http://127.0.0.1:{cluster.port}/metrics", trust_env=False)).text
    assert "moshi_cluster_replicas 2" in metrics
    assert "moshi_server_refused_busy_total{" in metrics


async def test_a_caller_far_ahead_of_real_time_is_closed_at_the_front_door(
    cluster: Cluster,
) -> None:
    """The ingress enforces serve's call limits (ADR 0065): 4.8 s of audio sent at once is
    refused from its Ogg headers, before a decode, and the slot comes back."""
    await wait_replicas(cluster, 2)
    c = Client(cluster.url)
    await c.connect()
    assert c.first[:1] == b"\x00" and c.ws is not None
    writer = sphn.OpusStreamWriter(24000)
    for f in tone(1, 60):
        data = writer.append_pcm(f)
        try:
            if len(data):
                await c.ws.send(b"\x01" + bytes(data))
        except ConnectionClosed:
            break
    await c.wait_closed(10)
    assert c.close_code == 1008, (c.close_code, c.errors)
    assert any("faster than real time" in e for e in c.errors), c.errors
    metrics = (await asyncio.to_thread(
        httpx.get, f"http://127.0.0.1:{cluster.port}/metrics", trust_env=False)).text
    reaped = [ln for ln in metrics.splitlines()
              if ln.startswith("moshi_ingress_calls_reaped_total{")]
    assert reaped and sum(float(ln.rsplit(" ", 1)[1]) for ln in reaped) >= 1
    await wait_replicas(cluster, 2)  # its slot is free again


async def test_a_calls_sampling_reaches_its_replica_and_a_bad_value_takes_no_slot(
    cluster: Cluster,
) -> None:
    """Kyutai's per-call sampling query parameters work as with ``serve`` (ADR 0080): the
    metadata carries the applied values and seeds; a bad value is refused at the door."""
    await wait_replicas(cluster, 2)
    c = Client(cluster.url + "?text_temperature=0.5&text_topk=40&text_seed=7&audio_seed=9"
               "&email=someone%40example.com")
    await c.connect()
    md = c.metadata
    assert c.first[:1] == b"\x00", c.errors
    assert (md["text_temperature"], md["text_topk"]) == (0.5, 40)
    assert (md["text_seed"], md["audio_seed"]) == (7, 9)
    assert md["audio_temperature"] == 0.0  # the replica's default: this cluster is --greedy
    assert md["instance_name"] == "voice-server-moshi" and md["cluster"] is True
    assert str(md["lm_model_file"]).endswith(".safetensors") and "build_info" in md
    await c.close()
    bad = Client(cluster.url + "?text_topk=0")
    await bad.connect()
    assert bad.first[:1] == b"\x05" and "text_topk must be in [1, 500]" in bad.errors[0]
    await bad.wait_closed(10)
    assert bad.close_code == 1008
    await wait_replicas(cluster, 2)


async def test_a_killed_replica_fails_only_its_calls_and_is_replaced(cluster: Cluster) -> None:
    reps = await wait_replicas(cluster, 2)
    pids = {str(r["replica"]): int(r["pid"]) for r in reps}  # type: ignore[call-overload]
    n = 60
    calls = [Client(cluster.url) for _ in range(4)]
    for c in calls:
        await c.connect()
    talks = [asyncio.create_task(c.talk(n)) for c in calls]
    victim = calls[0].replica
    doomed = [c for c in calls if c.replica == victim]
    spared = [c for c in calls if c.replica != victim]
    assert len(doomed) == len(spared) == 2
    # Free one survivor slot, so a new call has somewhere to go while Ray replaces the dead.
    await spared[1].close()
    await asyncio.sleep(1.5)
    killed_at = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    for c in doomed:
        await c.wait_closed(10)
        assert c.closed_at is not None and c.closed_at - killed_at < 2.0
        assert c.errors and "replica lost" in c.errors[-1]
        assert c.close_code == 1011

    newcomer = Client(cluster.url)
    await newcomer.connect()
    assert newcomer.first[:1] == b"\x00" and newcomer.replica != victim
    new_talk = asyncio.create_task(newcomer.talk(10))

    # The survivor's call lost no frame.
    assert await talks[calls.index(spared[0])] == n
    await spared[0].wait_audio(n - 1)
    await asyncio.sleep(0.5)
    assert spared[0].audio == n - 1 and not spared[0].errors
    assert await new_talk == 10
    await newcomer.wait_audio(9)
    assert newcomer.audio == 9 and not newcomer.errors
    await asyncio.gather(*(c.close() for c in (spared[0], newcomer)))
    for t in talks:
        await t
    # Ray replaces the dead replica (a new process).
    restored = await wait_replicas(cluster, 2, limit_s=180)
    assert pids[victim] not in {r["pid"] for r in restored}


async def calls_through_a_command(cluster: Cluster, calls: int, command: str) -> object:
    """``calls`` real-time calls of 50 frames; the operator's ``command`` on the console
    half a second in. Every call keeps every frame, with no error and no close; returns
    the console's answer, which Serve gives once the deploy is done (after the drain, so
    it is read once the calls are over)."""
    n = 50
    clients = [Client(cluster.url) for _ in range(calls)]
    for c in clients:
        await c.connect()
    talks = [asyncio.create_task(c.talk(n)) for c in clients]
    await asyncio.sleep(0.5)
    assert cluster.proc.stdin is not None
    cluster.proc.stdin.write(command + "\n")
    cluster.proc.stdin.flush()
    ack = read_line_in_daemon(cluster.proc)
    assert await asyncio.gather(*talks) == [n] * calls
    await asyncio.gather(*(c.wait_audio(n - 1) for c in clients))
    await asyncio.sleep(0.5)
    assert [c.audio for c in clients] == [n - 1] * calls
    assert not any(c.errors for c in clients) and all(c.closed_at is None for c in clients)
    await asyncio.gather(*(c.close() for c in clients))
    return json.loads(await asyncio.wait_for(ack, 120))


async def test_a_scale_down_during_calls_cuts_none(cluster: Cluster) -> None:
    before = {int(r["pid"]) for r in await wait_replicas(cluster, 2)}  # type: ignore[call-overload]
    # The operator scales the engine deployment to one replica mid-call.
    assert await calls_through_a_command(cluster, 4, "scale 1") == {
        "event": "deployed", "command": "scale 1", "replicas": 1}
    # Scaled in place: the drained replica is gone once its calls were over, and the one
    # left is one of the two that were there (not a whole new set, as a redeploy makes).
    left = await wait_replicas(cluster, 1, limit_s=60)
    assert int(left[0]["pid"]) in before  # type: ignore[call-overload]


async def test_a_redeploy_during_calls_cuts_none_and_rolls_the_engine(cluster: Cluster) -> None:
    (old,) = await wait_replicas(cluster, 1)  # what the scale-down left
    # A new engine version: Serve rolls its replicas, each old one drained.
    assert await calls_through_a_command(cluster, 2, "redeploy") == {
        "event": "deployed", "command": "redeploy", "replicas": 1}
    # The old replica drained and left; a new process serves, and takes a call.
    (new,) = await wait_replicas(cluster, 1, exclude_pid=int(old["pid"]), limit_s=120)  # type: ignore[call-overload]
    assert new["pid"] != old["pid"]
    after = Client(cluster.url)
    await after.connect()
    assert after.first[:1] == b"\x00" and after.replica == new["replica"]
    await after.close()
