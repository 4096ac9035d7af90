"""The batched engine on CPU with the dev checkpoint: equivalence, clocking, admission."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from moshi.models.lm import LMGen  # noqa: E402
from moshi.utils.compile import no_compile  # noqa: E402

from voice_server_moshi.engine.call_sampling import GREEDY  # noqa: E402
from voice_server_moshi.engine.checkpoints import make_dev_checkpoint  # noqa: E402
from voice_server_moshi.engine.core import (  # noqa: E402
    FRAME_SAMPLES,
    Engine,
    EngineConfig,
    SlotError,
    SlotEvent,
    SlotOutput,
)
from voice_server_moshi.engine.models import load_models  # noqa: E402
from voice_server_moshi.engine.session import EngineCall  # noqa: E402
from voice_server_moshi.errors import ServerBusyError  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("engine") / "dev"
    make_dev_checkpoint(d)
    return str(d)


def engine(ckpt: str, slots: int, **kw: object) -> Engine:
    cfg = EngineConfig(slots=slots, sampling=GREEDY, **kw)  # type: ignore[arg-type]
    eng = Engine(load_models(ckpt, device="cpu", dtype="float32"), cfg)
    eng.warm_up()
    return eng


def voice(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n * FRAME_SAMPLES) / 24000
    x = 0.3 * np.sin(2 * np.pi * (180 + 60 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32).reshape(n, FRAME_SAMPLES)


Out = tuple[np.ndarray, int, tuple[int, ...]]


def kyutai_reference(ckpt: str, frames: np.ndarray) -> list[Out]:
    """Exactly what Kyutai's moshi.server does for one call (batch of 1, skip_frames=1)."""
    m = load_models(ckpt, device="cpu", dtype="float32")
    gen = LMGen(m.lm, use_sampling=False)
    m.mimi.streaming_forever(1)
    gen.streaming_forever(1)
    out: list[Out] = []
    skip = 1
    with torch.no_grad(), no_compile():
        for f in frames:
            codes = m.mimi.encode(torch.from_numpy(f)[None, None])
            if skip:
                m.mimi.reset_streaming()
                skip -= 1
            tokens = gen.step(codes)
            if tokens is None:
                continue
            pcm = m.mimi.decode(tokens[:, 1:])[0, 0].numpy().copy()
            out.append((pcm, int(tokens[0, 0, 0]), tuple(tokens[0, 1:, 0].tolist())))
    return out


def solo(ckpt: str, frames: np.ndarray) -> list[SlotOutput]:
    eng = engine(ckpt, 1)
    got: list[SlotEvent] = []
    s = eng.try_open("solo", got.append)
    for f in frames:
        s.push(f)
        eng.tick()
    assert all(isinstance(g, SlotOutput) for g in got)
    return [g for g in got if isinstance(g, SlotOutput)]


def triples(outs: list[SlotOutput]) -> list[Out]:
    return [(o.pcm, o.text_token, o.audio_tokens) for o in outs]


def assert_same(a: list[Out], b: list[Out]) -> float:
    """Same text and audio tokens, and the same PCM within float tolerance (different
    calls differ by 1e-5 and more on this checkpoint; batching changes ~1e-7)."""
    assert len(a) == len(b)
    worst = 0.0
    for (pa, ta, ca), (pb, tb, cb) in zip(a, b, strict=True):
        assert (ta, ca) == (tb, cb)
        worst = max(worst, float(np.abs(pa - pb).max()))
    assert worst < 1e-6, worst
    return worst


def test_staggered_joins_leaves_and_jitter_match_the_call_run_alone(ckpt: str) -> None:
    # name -> (tick it joins, frames); B's input stalls for two ticks (jitter); D reuses
    # the row A leaves, so a wrong reset would show.
    plan = {"A": (0, 14), "B": (3, 10), "C": (5, 8), "D": (16, 9)}
    frames = {k: voice(i, n) for i, (k, (_, n)) in enumerate(plan.items())}
    eng = engine(ckpt, 3)
    got: dict[str, list[SlotEvent]] = {k: [] for k in plan}
    slots = {}
    fed = dict.fromkeys(plan, 0)
    rows = {}
    for tick in range(40):
        for k, (start, n) in plan.items():
            if tick == start:
                slots[k] = eng.try_open(k, got[k].append)
                rows[k] = slots[k].index
            if k in slots and fed[k] < n and not (k == "B" and tick in (6, 7)):
                slots[k].push(frames[k][fed[k]])
                fed[k] += 1
        eng.tick()
        for k, (_, n) in plan.items():
            if k in slots and not slots[k].closed and len(got[k]) == n - 1:
                slots[k].close()
    assert rows["D"] == rows["A"]
    for k, (_, n) in plan.items():
        outs = [g for g in got[k] if isinstance(g, SlotOutput)]
        assert len(outs) == n - 1 == len(got[k])  # one output per input after the first
        assert [o.step for o in outs] == list(range(n - 1))
        batched = triples(outs)
        assert_same(batched, triples(solo(ckpt, frames[k])))
        assert_same(batched, kyutai_reference(ckpt, frames[k]))
    # Not trivially equal: the agent hears the caller, so different callers get
    # different agent tokens.
    a, b = ([o.audio_tokens for o in got[k] if isinstance(o, SlotOutput)][:7] for k in "AB")
    assert a != b


def test_idle_then_silence_fill_and_overrun_are_counted(ckpt: str) -> None:
    eng = engine(ckpt, 2, fill_after_ticks=2, queue_frames=3)
    got: list[SlotEvent] = []
    s = eng.try_open("x", got.append)
    assert eng.tick().executed == 0  # no frame yet: the call has not started
    s.push(voice(0, 1)[0])
    s.push(voice(0, 2)[1])
    eng.tick()
    eng.tick()
    assert len(got) == 1  # first frame yields nothing
    r1, r2 = eng.tick(), eng.tick()  # starved: idled, not filled
    assert (r1.executed, r2.executed) == (0, 0) and s.idle_ticks == 2 and s.underruns == 0
    assert eng.tick().executed == 1  # third starved tick: silence fed
    assert s.underruns == 1 and eng.metrics().underruns == 1 and len(got) == 2
    for f in voice(1, 5):
        s.push(f)
    assert s.overruns == 2 and eng.metrics().overruns == 2  # queue of 3 kept the newest


def test_bad_frames_are_refused_or_sanitised(ckpt: str) -> None:
    eng = engine(ckpt, 1)
    got: list[SlotEvent] = []
    s = eng.try_open("x", got.append)
    with pytest.raises(ValueError, match="1920 samples"):
        s.push(np.zeros(960, dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        s.push(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    bad = np.full(FRAME_SAMPLES, np.nan, dtype=np.float32)
    for _ in range(3):
        s.push(bad)
        eng.tick()
    outs = [g for g in got if isinstance(g, SlotOutput)]
    assert len(outs) == 2 and all(np.isfinite(o.pcm).all() for o in outs)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.push(np.zeros(FRAME_SAMPLES, dtype=np.float32))


def test_a_failing_consumer_closes_only_its_own_call(ckpt: str) -> None:
    eng = engine(ckpt, 2)
    good: list[SlotEvent] = []
    bad_events: list[SlotEvent] = []

    def bad_sink(ev: SlotEvent) -> None:
        bad_events.append(ev)
        if isinstance(ev, SlotOutput):
            raise RuntimeError("consumer exploded")

    a = eng.try_open("good", good.append)
    b = eng.try_open("bad", bad_sink)
    frames = voice(2, 6)
    for f in frames:
        a.push(f)
        if not b.closed:
            b.push(f)
        eng.tick()
    assert b.closed and isinstance(bad_events[-1], SlotError)
    assert "consumer exploded" in bad_events[-1].message
    assert not a.closed
    outs = triples([g for g in good if isinstance(g, SlotOutput)])
    assert_same(outs, triples(solo(ckpt, frames)))


async def test_admission_refuses_when_full_and_waits_for_a_free_slot(ckpt: str) -> None:
    eng = engine(ckpt, 1)
    first = eng.try_open("one", lambda ev: None)
    with pytest.raises(ServerBusyError, match="all 1 engine slots are busy"):
        eng.try_open("two", lambda ev: None)
    with pytest.raises(ServerBusyError):
        await eng.open("two", lambda ev: None, wait_s=0.1)
    # A waiter gets the slot as soon as it is released, from another thread.
    threading.Timer(0.2, first.close).start()
    t0 = time.monotonic()
    second = await eng.open("three", lambda ev: None, wait_s=20)
    assert second.index == 0 and time.monotonic() - t0 < 15
    assert eng.metrics().calls_refused == 2 and eng.free_slots() == 0


async def test_wall_clock_thread_serves_asyncio_calls(ckpt: str) -> None:
    eng = engine(ckpt, 2, tick_s=0.02)
    eng.start()
    try:
        calls = [EngineCall(eng, f"c{i}") for i in range(2)]
        for c in calls:
            await c.open()
        n = 8
        received: dict[int, list[SlotEvent]] = {0: [], 1: []}

        async def consume(i: int) -> None:
            async for ev in calls[i].events():
                received[i].append(ev)
                if len(received[i]) == n - 1:
                    return

        tasks = [asyncio.create_task(consume(i)) for i in range(2)]
        for f in voice(3, n):
            for c in calls:
                c.send(f)
            await asyncio.sleep(0.03)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert all(len(r) == n - 1 for r in received.values())
        m = eng.metrics()
        assert m.ticks >= n - 1 and m.tick_p50_s is not None and m.active_slots == 2
        assert m.state_bytes_per_slot > 0 and sum(m.tick_buckets) > 0
        for c in calls:
            c.close()
        assert eng.free_slots() == 2
    finally:
        eng.stop()
