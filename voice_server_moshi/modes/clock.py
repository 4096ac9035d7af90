"""The call's clock: real time (optionally sped up) or driven by the host, one tick a call."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Seconds of call time since ``start()``."""

    def start(self) -> None: ...

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class RealClock:
    """The event loop's monotonic clock, ``speed`` times faster than real time."""

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()

    def now(self) -> float:
        if self._t0 is None:
            return 0.0
        return (asyncio.get_running_loop().time() - self._t0) * self.speed

    async def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """No timer: the host calls ``FullDuplexMode.tick()`` once per frame (virtual time).

    Used for faster-than-real-time tests and benchmarks, where the host advances the call
    only when the model has produced its output for the media sent so far.
    """

    def __init__(self) -> None:
        self._t = 0.0

    def start(self) -> None:
        self._t = 0.0

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds

    async def sleep_until(self, t: float) -> None:
        raise RuntimeError("ManualClock does not sleep: the host drives tick()")
