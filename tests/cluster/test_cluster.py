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
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("moshi")

import sphn
from websockets.exceptions import ConnectionClosed

from ..frontdoors import doors
from .cluster_proc import cluster_process

pytestmark = pytest.mark.slow



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


class Client(doors.Client):
    """The front doors' Kyutai client, plus the cluster's replica and a stoppable talk."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._stop = False
        self.closed_at: float | None = None

    @property
    def replica(self) -> str:
        return str(self.metadata.get("replica"))

    @property
    def audio(self) -> int:
        return len(self.of(1))

    async def _read(self) -> None:
        await super()._read()
        self.closed_at = time.monotonic()

    async def talk_n(self, n: int) -> int:
        """Send ``n`` frames in real time (fewer if stopped or closed); returns how many."""
        assert self.ws is not None
        writer = sphn.OpusStreamWriter(24000)
        sent = 0
        for f in doors.tone(len(self.url) % 7, n):
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

    async def close(self) -> None:
        self._stop = True
        await super().close()


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
    talks = [asyncio.create_task(c.talk_n(n)) for c in calls]

    for _ in range(40):  # replicas report each slot change at once; allow the hop
        cap = await asyncio.to_thread(cluster.capacity)
        if cap["active_slots"] == 4:
            break
        await asyncio.sleep(0.05)
    assert (cap["slots"], cap["active_slots"], cap["free_slots"]) == (4, 4, 0)
    fifth = Client(cluster.url)
    await fifth.connect()
    assert fifth.first[:1] == b"\x05" and "server busy" in fifth.errors()[0]
    await fifth.closed(10)
    assert fifth.close_code == 1013

    assert await asyncio.gather(*talks) == [n] * 4
    await asyncio.gather(*(c.wait_audio(n - 1) for c in calls))
    await asyncio.sleep(0.5)
    assert [c.audio for c in calls] == [n - 1] * 4  # one back per frame after the first
    assert not any(c.errors() for c in calls)
    await asyncio.gather(*(c.close() for c in calls))
    metrics = (await asyncio.to_thread(
        httpx.get, f"http://127.0.0.1:{cluster.port}/metrics", trust_env=False)).text
    assert "moshi_cluster_replicas 2" in metrics
    assert "moshi_server_refused_busy_total " in metrics


async def test_a_killed_replica_fails_only_its_calls_and_is_replaced(cluster: Cluster) -> None:
    reps = await wait_replicas(cluster, 2)
    pids = {str(r["replica"]): int(r["pid"]) for r in reps}  # type: ignore[call-overload]
    n = 60
    calls = [Client(cluster.url) for _ in range(4)]
    for c in calls:
        await c.connect()
    talks = [asyncio.create_task(c.talk_n(n)) for c in calls]
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
        await c.closed(10)
        assert c.closed_at is not None and c.closed_at - killed_at < 2.0
        assert c.errors() and "replica lost" in c.errors()[-1]
        assert c.close_code == 1011

    newcomer = Client(cluster.url)
    await newcomer.connect()
    assert newcomer.first[:1] == b"\x00" and newcomer.replica != victim
    new_talk = asyncio.create_task(newcomer.talk_n(10))

    # The survivor's call lost no frame.
    assert await talks[calls.index(spared[0])] == n
    await spared[0].wait_audio(n - 1)
    await asyncio.sleep(0.5)
    assert spared[0].audio == n - 1 and not spared[0].errors()
    assert await new_talk == 10
    await newcomer.wait_audio(9)
    assert newcomer.audio == 9 and not newcomer.errors()
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
    talks = [asyncio.create_task(c.talk_n(n)) for c in clients]
    await asyncio.sleep(0.5)
    assert cluster.proc.stdin is not None
    cluster.proc.stdin.write(command + "\n")
    cluster.proc.stdin.flush()
    ack = read_line_in_daemon(cluster.proc)
    assert await asyncio.gather(*talks) == [n] * calls
    await asyncio.gather(*(c.wait_audio(n - 1) for c in clients))
    await asyncio.sleep(0.5)
    assert [c.audio for c in clients] == [n - 1] * calls
    assert not any(c.errors() for c in clients) and all(c.closed_at is None for c in clients)
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
