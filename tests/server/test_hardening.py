"""`serve` against idle, frozen, guessing and hostile peers, on loopback (issue 10).

In-process :class:`BatchedServer` over one real engine (dev checkpoint, CPU) with short
limits, driven by raw ``websockets`` clients like Kyutai's; the tests that need the real
command (a dead stderr, debug logs, process stalls) are in ``test_hardening_serve.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voice_server_moshi.engine.call_sampling import GREEDY
from voice_server_moshi.engine.core import Engine, EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.server.app import BatchedServer, ServerConfig
from voice_server_moshi.server.limits import CallLimits

from .test_server import Client, tone


@pytest.fixture(scope="module")
def engine(ckpt: str) -> Iterator[Engine]:
    eng = Engine(load_models(ckpt, device="cpu", dtype="float32"),
                 EngineConfig(slots=4, sampling=GREEDY))
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    from voice_server_moshi.engine.checkpoints import make_dev_checkpoint

    d = tmp_path_factory.mktemp("hardening") / "dev"
    make_dev_checkpoint(d)
    return str(d)


@contextlib.asynccontextmanager
async def running(engine: Engine, **config: object) -> AsyncIterator[BatchedServer]:
    srv = BatchedServer(engine, ServerConfig(port=0, **config))  # type: ignore[arg-type]
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def metrics_text(srv: BatchedServer, **kw: object) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}",
                                 trust_env=False) as http:
        return (await http.get("/metrics", **kw)).text  # type: ignore[arg-type]


def closed_count(text: str, reason: str) -> float:
    m = re.search(rf'moshi_server_calls_closed_total{{reason="{reason}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def test_idle_sockets_are_reaped_and_a_real_call_then_connects(engine: Engine) -> None:
    limits = CallLimits(first_audio_s=1.0, no_input_s=1.0)
    async with running(engine, limits=limits) as srv:
        url = f"ws://127.0.0.1:{srv.port}/api/chat"
        idle = [Client(url) for _ in range(4)]
        await asyncio.gather(*(c.connect() for c in idle))
        assert engine.free_slots() == 0  # four silent sockets hold every slot...
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(asyncio.gather(*(c._task for c in idle if c._task)), 10)
        reaped_after = asyncio.get_running_loop().time() - t0
        for c in idle:  # ...until each is reaped with a reason and a close code
            assert c.errors == ["no audio within 1 s of the handshake; closing the call"]
            assert c.ws is not None and c.ws.close_code == 1008
            assert c.ws.close_reason == "first_audio_timeout"
        assert reaped_after < 5

        # A real call then connects and talks; when its audio stops, it is reaped too.
        real = Client(url)
        await real.connect()
        assert real.first is not None and real.first[:1] == b"\x00"
        talking = asyncio.create_task(real.talk(tone(0, 200)))
        await real.wait_audio(3, limit_s=30)
        talking.cancel()  # the client goes quiet (but stays connected)
        with contextlib.suppress(asyncio.CancelledError):
            await talking
        assert real._task is not None
        await asyncio.wait_for(real._task, 10)
        assert real.errors == ["no audio for 1 s; closing the call"]
        assert real.ws is not None and real.ws.close_code == 1008
        text = await metrics_text(srv)
        assert closed_count(text, "first_audio_timeout") == 4
        assert closed_count(text, "no_input_timeout") == 1
    for _ in range(100):
        if engine.free_slots() == 4:
            break
        await asyncio.sleep(0.05)
    assert engine.free_slots() == 4


async def test_a_frozen_peer_is_reaped_by_keepalive_and_calls_can_be_capped(
    engine: Engine,
) -> None:
    limits = CallLimits(first_audio_s=None, no_input_s=None, max_call_s=1.5,
                        ping_interval_s=0.3, ping_timeout_s=0.3)
    async with running(engine, limits=limits) as srv:
        url = f"ws://127.0.0.1:{srv.port}/api/chat"
        frozen = Client(url)
        await frozen.connect()
        assert frozen.ws is not None
        frozen.ws.transport.pause_reading()  # a frozen process: reads nothing, answers nothing
        talker = Client(url)
        await talker.connect()
        talking = asyncio.create_task(talker.talk(tone(1, 40)))
        for _ in range(100):
            if srv.counters.closed["keepalive_timeout"] == 1:
                break
            await asyncio.sleep(0.05)
        assert srv.counters.closed["keepalive_timeout"] == 1
        assert talker._task is not None
        await asyncio.wait_for(talker._task, 10)  # the cap ends the talking call
        talking.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await talking
        assert talker.errors == ["maximum call length of 1.5 s reached"]
        assert talker.ws is not None and talker.ws.close_code == 1000
        assert talker.audio_msgs >= 1
        assert closed_count(await metrics_text(srv), "max_call_length") == 1
        frozen.ws.transport.resume_reading()
        await frozen.close()


async def test_wrong_tokens_are_throttled_per_address_with_429(engine: Engine) -> None:
    async with running(engine, auth_token="s3cret", auth_max_failures=3,
                       auth_window_s=60.0) as srv:
        url = f"ws://127.0.0.1:{srv.port}/api/chat"
        for _ in range(3):
            with pytest.raises(InvalidStatus) as exc:
                await websockets.connect(url, proxy=None,
                                         additional_headers={"Authorization": "Bearer guess"})
            assert exc.value.response.status_code == 401
        # The fourth wrong try from that address is throttled, and its answer held.
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(InvalidStatus) as exc:
            await websockets.connect(f"{url}?auth_token=guess", proxy=None)
        assert exc.value.response.status_code == 429
        assert asyncio.get_running_loop().time() - t0 >= srv.auth_limiter.hold_s
        assert 1 <= int(exc.value.response.headers["Retry-After"]) <= 60
        # Another address is not affected.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}",
                                     transport=transport, trust_env=False) as other:
            r = await other.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert "moshi_server_auth_failures_total 3.0" in r.text
        assert "moshi_server_auth_throttled_total 1.0" in r.text


async def test_500_wrong_tokens_do_not_lock_the_right_one_out(engine: Engine) -> None:
    """Every call of a voice-server host comes from one address: a misconfigured worker
    there (500 wrong tokens) must not lock the others out, and its guesses stay
    throttled."""
    async with running(engine, auth_token="s3cret", auth_max_failures=10,
                       auth_window_s=60.0) as srv:
        srv.auth_limiter.hold_s = 0.01  # the hold's own length is tested in test_limits
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}",
                                     trust_env=False) as http:
            async def guess(i: int) -> int:
                r = await http.get("/metrics", headers={"Authorization": f"Bearer guess{i}"})
                return r.status_code

            codes: list[int] = []
            for batch in range(10):
                codes += await asyncio.gather(*(guess(batch * 50 + i) for i in range(50)))
            assert codes.count(401) == 10 and codes.count(429) == 490
            call = Client(f"ws://127.0.0.1:{srv.port}/api/chat?auth_token=s3cret")
            await call.connect()  # the right token, from the same address: served
            assert call.first is not None and call.first[:1] == b"\x00"
            await call.close()
            assert (await guess(501)) == 429  # and the guesses are still throttled
            r = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert "moshi_server_auth_throttled_total 491.0" in r.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_readyz_says_so_when_the_tick_thread_dies(ckpt: str) -> None:
    eng = Engine(load_models(ckpt, device="cpu", dtype="float32"), EngineConfig(slots=1))
    await asyncio.to_thread(eng.start)
    try:
        async with running(eng) as srv, httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{srv.port}", trust_env=False) as http:
            assert (await http.get("/readyz")).status_code == 200

            def boom() -> bool:
                raise RuntimeError("killed outside the tick's error handling")

            eng._has_slots = boom  # type: ignore[method-assign]
            eng._wake.set()
            for _ in range(100):
                r = await http.get("/readyz")
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 503
            assert r.json()["reason"] == "engine tick thread is not running"
            assert "moshi_engine_tick_thread_alive 0.0" in (await http.get("/metrics")).text
    finally:
        eng.stop()
