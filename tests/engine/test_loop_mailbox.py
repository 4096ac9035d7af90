"""The tick thread's mailbox to an event loop: one wake-up per batch, order kept, a closed
loop refused, one failing delivery costing the others nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from voice_server_moshi.engine.loop_mailbox import LoopMailbox, mailbox_for


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    # uvloop, which hosts often run, too: the mailbox keys its loops by weak reference.
    if request.param == "uvloop":
        lp = pytest.importorskip("uvloop").new_event_loop()
    else:
        lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _count_wakes(loop: asyncio.AbstractEventLoop) -> list[int]:
    wakes = [0]
    real = loop.call_soon_threadsafe

    def counted(*args: Any, **kw: Any) -> Any:
        wakes[0] += 1
        return real(*args, **kw)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return wakes


def _from_thread(fn: Any) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_a_batch_posted_from_another_thread_wakes_the_loop_once_and_keeps_order(
        loop: asyncio.AbstractEventLoop) -> None:
    wakes, got = _count_wakes(loop), []
    box = LoopMailbox(loop)
    _from_thread(lambda: [box.post(got.append, i) for i in range(16)])
    assert wakes == [1] and got == []  # nothing runs off the loop
    loop.run_until_complete(asyncio.sleep(0))
    assert got == list(range(16))
    # Once drained, the next batch wakes the loop again.
    _from_thread(lambda: [box.post(got.append, i) for i in range(16, 20)])
    loop.run_until_complete(asyncio.sleep(0))
    assert wakes == [2] and got == list(range(20))


def test_a_closed_loop_is_refused_as_call_soon_threadsafe_refuses_it(
        loop: asyncio.AbstractEventLoop) -> None:
    box = LoopMailbox(loop)
    box.post(print, "queued before the close")  # a wake-up is scheduled, never run
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        box.post(print, "after the close")


def test_one_failing_delivery_costs_the_others_nothing(
        loop: asyncio.AbstractEventLoop) -> None:
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _lp, ctx: seen.append(ctx))
    got: list[int] = []

    def deliver(i: int) -> None:
        if i == 1:
            raise ValueError("consumer gone")
        got.append(i)

    box = LoopMailbox(loop)
    _from_thread(lambda: [box.post(deliver, i) for i in range(3)])
    loop.run_until_complete(asyncio.sleep(0))
    assert got == [0, 2]
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)


def test_every_call_on_a_loop_shares_its_mailbox(loop: asyncio.AbstractEventLoop) -> None:
    other = asyncio.new_event_loop()
    try:
        assert mailbox_for(loop) is mailbox_for(loop)
        assert mailbox_for(other) is not mailbox_for(loop)
    finally:
        other.close()
