"""Latency recovers after a stall: the engine trims a standing input backlog back to its
target depth (ADR 0065), for network calls and for the embedded transport's paced sender,
while jitter and a sender faster than real time lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import statistics

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.checkpoints import make_dev_checkpoint
from voice_server_moshi.engine.core import Engine, EngineConfig
from voice_server_moshi.engine.models import load_models
from voice_server_moshi.engine.session import EngineCall

FRAME = np.zeros(1920, dtype=np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("trim") / "dev"
    make_dev_checkpoint(d)
    return load_models(str(d), device="cpu", dtype="float32")


def test_a_standing_backlog_is_trimmed_to_target_and_counted(models) -> None:  # type: ignore[no-untyped-def]
    eng = Engine(models, EngineConfig(slots=3, fill_after_ticks=None))
    try:
        steady = eng.try_open("steady", lambda ev: None)
        jitter = eng.try_open("jitter", lambda ev: None)
        paced = eng.try_open("paced", lambda ev: None)
        for _ in range(20):  # real time: one frame per tick, never trimmed
            steady.push(FRAME)
            eng.tick()
        assert steady.trimmed == 0
        for i in range(40):  # jitter: 0 or 2 frames per tick, never trimmed
            for _ in range(2 * (i % 2)):
                jitter.push(FRAME)
            eng.tick()
        assert jitter.trimmed == 0 and jitter.overruns == 0
        # A real-time caller whose frames land near the tick: one misses its tick (the row
        # idles), and from then on one frame more waits before every tick. That is not a
        # stall: nothing is trimmed, whatever the window.
        jitter.push(FRAME)
        eng.tick()
        for _ in range(3 * (eng.config.trim_window_ticks or 1)):
            jitter.push(FRAME)
            eng.tick()
        assert jitter.queued == 1 and jitter.trimmed == 0

        # A stall: 12 frames arrive at once; the queue keeps 4 (8 overruns)...
        for _ in range(12):
            steady.push(FRAME)
        assert steady.overruns == 8
        depths = []
        for _ in range(20):  # ...then real time again
            steady.push(FRAME)
            depths.append(steady.queued)
            eng.tick()
        # Without trimming the backlog would stay at 4 frames (320 ms) for good; after one
        # window (12 ticks, 0.96 s) it is back to one frame over the target.
        assert depths[:12] == [4] * 12
        assert max(depths[13:]) <= 2 and steady.trimmed == 2
        m = eng.metrics()
        assert m.trimmed == 2 and m.overruns == steady.overruns == 9
        assert dict(m.input_depths)[steady.index] <= 1

        # A paced sender (the embedded transport ahead of real time) keeps its queue full
        # on purpose: it is never trimmed.
        for _ in range(30):
            while paced.queued < eng.config.queue_frames:
                paced.push(FRAME)
            paced.sender_waits()
            eng.tick()
        assert paced.trimmed == 0 and paced.overruns == 0
    finally:
        eng.detach()  # hands the models back for the next engine


@pytest.mark.slow
async def test_embedded_latency_recovers_after_a_one_second_engine_stall(models) -> None:  # type: ignore[no-untyped-def]
    """A real-time source (a frame every 80 ms) into send_paced, as the embedded transport
    does; the engine stalls for 1 s. The frames waiting (upstream plus in the slot) must
    come back to the target within about a second, not stay 1 s + 320 ms behind."""
    eng = Engine(models, EngineConfig(slots=1, fill_after_ticks=None))
    await asyncio.to_thread(eng.start)
    call = EngineCall(eng, "embedded-stall")
    source: asyncio.Queue[np.ndarray] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    samples: list[tuple[float, int]] = []

    async def produce() -> None:
        t0 = loop.time()
        for i in range(100):
            source.put_nowait(FRAME)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.08 - loop.time()))

    async def send() -> None:
        while True:
            await call.send_paced(await source.get())

    async def watch() -> None:
        while True:
            assert call.slot is not None
            samples.append((loop.time(), source.qsize() + call.slot.queued))
            await asyncio.sleep(0.04)

    async with call.admitted() as slot:
        tasks = [asyncio.create_task(c()) for c in (send, watch)]
        producing = asyncio.create_task(produce())
        await asyncio.sleep(2.0)
        # The engine stalls (a GC pause, a slow device) for 1 s.
        await asyncio.to_thread(lambda: (eng._tick_lock.acquire(), __import__("time").sleep(1.0),
                                         eng._tick_lock.release()))
        resumed = loop.time()
        await producing
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        stalled_at = resumed - 1.0
        before = [n for t, n in samples if stalled_at - 1.5 <= t < stalled_at]
        after = [n for t, n in samples if resumed + 1.5 <= t <= resumed + 4.0]
        base = statistics.median(before)
        print(f"frames waiting: median {base} before the stall, {statistics.median(after)} "
              f"(max {max(after)}) 1.5-4 s after it; trimmed {slot.trimmed}, "
              f"overruns {slot.overruns}, late ticks {eng.metrics().late_ticks}")
        # Back to the baseline within two frames; without trimming it stays ~13 higher.
        # The trim leaves up to one frame over the target standing (ADR 0065), and the
        # schedule restarted after the stall (ADR 0160) puts the sender at any phase, so
        # a sample sees up to one frame more: medians of 1-3 on the 2-core VM, before and
        # after ADR 0160 (the one-frame bound failed 1 run in 4 on the code before it).
        assert statistics.median(after) <= base + 2
        assert slot.trimmed + slot.overruns >= 8  # the stale second was dropped, counted
    eng.detach()


def test_trim_after_ms_maps_to_whole_ticks_and_zero_switches_trimming_off() -> None:
    from voice_server_moshi.engine.config import trim_window_ticks

    assert trim_window_ticks(0) is None and trim_window_ticks(-5) is None
    assert trim_window_ticks(960) == 12  # the default: 12 ticks of 80 ms
    assert trim_window_ticks(1) == 1 and trim_window_ticks(81) == 2
    assert EngineConfig(trim_window_ticks=trim_window_ticks(0)).trim_window_ticks is None
