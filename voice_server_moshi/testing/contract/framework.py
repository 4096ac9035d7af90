"""The contract suite's machinery: providers, a simulated caller, normalization, parity rules.

A :class:`Provider` knows one adapter and its peer: how to start the peer, create the
adapter, and make the peer enact each scenario. Scenarios a peer cannot enact are listed in
``Provider.cannot`` with the reason, and are reported as "n/a (peer cannot): reason".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from voice_server_moshi.adapter import VoiceModelAdapter, VoiceModelConfig
from voice_server_moshi.audio import g711
from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Event,
    Interruption,
    SpeechEnded,
    SpeechStarted,
    Steering,
    Transcript,
)
from voice_server_moshi.formats import AudioFormat

#: Every scenario of the suite, in report order. ``peer-closes`` expands per close code.
SCENARIOS: tuple[str, ...] = (
    "connect",
    "connect-refused",
    "caller-speaks-then-pauses",
    "agent-speaks",
    "barge-in",
    "peer-error",
    "peer-closes",
    "peer-vanishes",
    "peer-restarts",
    "malformed-audio",
    "host-disconnects-mid-speech",
    "slow-consumer",
    "steering",
)

#: Generous bounds: the machine is shared and slow; these catch hangs, not latency.
EVENT_TIMEOUT_S = 20.0
END_BOUND_S = 15.0
#: A steered line must be back (said and transcribed) within this; generous, as above.
STEER_BOUND_S = 20.0

TELEPHONY = AudioFormat("mulaw", 8000, 20)


class PeerCannot(Exception):
    """Raised by a provider for a scenario its peer cannot enact (the reason is the text)."""


class Provider:
    """One adapter plus its peer, as the contract suite drives them.

    Subclass it for your own adapter (see docs/contract-suite.md). Methods get the object
    yielded by :meth:`peer`.
    """

    #: Column name in the parity report.
    name: ClassVar[str] = "adapter"
    #: Call format the suite uses (``malformed-audio`` uses 16-bit PCM at the same rate).
    call_format: ClassVar[AudioFormat] = TELEPHONY
    #: Caller audio pacing: 1.0 is real time, 0.5 twice as fast. Real peers clocked by
    #: their input (Moshi) want 1.0.
    pace: ClassVar[float] = 1.0
    #: scenario -> why the peer cannot enact it (reported as n/a, never as a pass).
    cannot: ClassVar[Mapping[str, str]] = {}
    #: Close codes the peer really uses; ``peer-closes`` runs once for each.
    close_codes: ClassVar[tuple[int, ...]] = ()
    #: Close codes that end a call normally (``disconnected`` without an ``error``).
    normal_close_codes: ClassVar[frozenset[int]] = frozenset({1000})

    def peer(self, request: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        """Start the peer for one test; ``request`` is pytest's (for fixtures)."""
        raise NotImplementedError

    def make_adapter(
        self, peer: Any, *, max_queued_events: int = 500, bad_credentials: bool = False
    ) -> VoiceModelAdapter:
        raise NotImplementedError

    async def agent_speaks(self, peer: Any, call: Call, ms: int) -> None:
        """Make the agent say about ``ms`` of audio (returns once it was sent)."""
        raise NotImplementedError

    async def agent_speaks_unobserved(
        self, peer: Any, adapter: VoiceModelAdapter, ms: int
    ) -> None:
        """Make the agent say about ``ms`` of audio while nobody reads the events."""
        raise NotImplementedError

    async def start_long_speech(self, peer: Any, call: Call, ms: int) -> None:
        """Start a reply of ``ms`` paced at real time (barge-in, host disconnect)."""
        raise NotImplementedError

    async def peer_error(self, peer: Any) -> None:
        raise PeerCannot(self.cannot.get("peer-error", "no scripted error"))

    async def peer_close(self, peer: Any, code: int) -> None:
        raise PeerCannot(self.cannot.get("peer-closes", "no scripted close"))

    async def peer_vanish(self, peer: Any) -> None:
        raise PeerCannot(self.cannot.get("peer-vanishes", "cannot vanish"))

    async def peer_restart(self, peer: Any) -> bool:
        """Restart the service in a resumable way; True when the adapter then resumed."""
        raise PeerCannot(self.cannot.get("peer-restarts", "no resumption in the protocol"))

    def check_peer_side(self, peer: Any, scenario: str) -> None:
        """Scenario-specific assertions on what the peer received (optional)."""


# -- a simulated caller -----------------------------------------------------------------


def caller_frame(fmt: AudioFormat, loud: bool, index: int) -> bytes:
    """One frame of caller audio: a 300 Hz tone at -10 dBFS when ``loud``, else silence."""
    n = fmt.samples_per_frame
    if loud:
        t = (np.arange(n) + index * n) / fmt.sample_rate
        pcm = (10000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    else:
        pcm = np.zeros(n, dtype=np.int16)
    return g711.encode(pcm, fmt.encoding)


@dataclass
class Call:
    """An adapter in a call: a caller that streams frames, and the events it got."""

    adapter: VoiceModelAdapter
    fmt: AudioFormat
    pace: float
    consume: bool = True
    events: list[Event] = field(default_factory=list)
    send_errors: list[BaseException] = field(default_factory=list)
    _loud_frames: int = 0
    _frames_sent: int = 0
    _pump: asyncio.Task[None] | None = None
    _consumer: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tick: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self.adapter.connect(VoiceModelConfig(audio=self.fmt))
        if self.consume:
            self.start_consuming()
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def start_consuming(self) -> None:
        self._consumer = asyncio.get_running_loop().create_task(self._run_consumer())

    async def _run_consumer(self) -> None:
        async for event in self.adapter.events():
            self.events.append(event)
            self._changed.set()

    async def _run_pump(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            loud = self._loud_frames > 0
            frame = caller_frame(self.fmt, loud, self._frames_sent)
            try:
                await self.adapter.send_audio(frame)
            except Exception as exc:  # the session ended under us: stop streaming
                self.send_errors.append(exc)
                return
            self._frames_sent += 1
            if loud:
                self._loud_frames -= 1
            self._tick.set()
            due = t0 + self._frames_sent * self.fmt.frame_ms / 1000 * self.pace
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def speak(self, ms: int) -> None:
        """The caller talks for ``ms`` (then the pump goes back to silence)."""
        self._loud_frames = ms // self.fmt.frame_ms
        await self._until(lambda: self._loud_frames <= 0)

    async def quiet(self, ms: int) -> None:
        """Let ``ms`` of caller stream time pass (silence is streamed meanwhile)."""
        target = self._frames_sent + ms // self.fmt.frame_ms
        await self._until(lambda: self._frames_sent >= target)

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait, frame by frame, until ``done()`` or the caller stopped streaming."""
        while not done() and self._pump is not None and not self._pump.done():
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                # The timeout only re-checks whether the pump ended.
                await asyncio.wait_for(self._tick.wait(), 0.5)

    async def wait_for(
        self, predicate: Callable[[Event], bool], *, timeout_s: float = EVENT_TIMEOUT_S
    ) -> Event:
        async with asyncio.timeout(timeout_s):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def wait_name(self, name: str, *, timeout_s: float = EVENT_TIMEOUT_S) -> Event:
        return await self.wait_for(lambda e: e.name == name, timeout_s=timeout_s)

    async def wait_ended(self, *, timeout_s: float = END_BOUND_S) -> None:
        """The event stream ended (``disconnected`` delivered) within ``timeout_s``."""
        assert self._consumer is not None
        await asyncio.wait_for(asyncio.shield(self._consumer), timeout_s)

    async def stop_caller(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def hang_up(self) -> None:
        """The host ends the call; the event stream must end within the bound."""
        await self.stop_caller()
        await asyncio.wait_for(self.adapter.disconnect(), END_BOUND_S)
        if self._consumer is None:
            self.start_consuming()
        await self.wait_ended()

    async def aclose(self) -> None:
        await self.stop_caller()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.adapter.disconnect(), END_BOUND_S)
        if self._consumer is not None and not self._consumer.done():
            self._consumer.cancel()


@contextlib.asynccontextmanager
async def in_call(
    provider: Provider, adapter: VoiceModelAdapter, fmt: AudioFormat | None = None,
    *, consume: bool = True,
) -> AsyncIterator[Call]:
    call = Call(adapter, fmt or provider.call_format, provider.pace, consume=consume)
    await call.start()
    try:
        yield call
    finally:
        await call.aclose()


# -- normalization -----------------------------------------------------------------------


def token(event: Event) -> str:
    """One event as a report token: the name plus what distinguishes it for parity."""
    if isinstance(event, Error):
        return f"error({event.code}{', fatal' if event.fatal else ''})"
    if isinstance(event, Disconnected):
        return f"disconnected({event.reason}, {event.close_code})"
    if isinstance(event, Transcript):
        return f"transcript({event.role}{'' if event.final else ', partial'})"
    if isinstance(event, SpeechStarted | SpeechEnded):
        return f"{event.name}({event.source})"
    if isinstance(event, Steering):
        return f"steering({event.status})"
    return event.name


#: Agent output: a run of these, in any interleaving, is one group in the report.
_STREAM_TOKENS = frozenset({"audio-chunk", "transcript(agent, partial)", "transcript(agent)"})


def normalize(events: Iterable[Event]) -> list[str]:
    """Tokens with runs collapsed: ``error(x)×2``; a run of agent output (audio and agent
    transcripts, in any interleaving) becomes one group such as
    ``audio-chunk×50 ~ transcript(agent, partial)×5 ~ transcript(agent)``, its parts in
    order of first appearance."""
    out: list[str] = []
    run: dict[str, int] = {}
    last: str | None = None
    last_n = 0

    def flush_run() -> None:
        if run:
            parts = [f"{k}×{v}" if v > 1 else k for k, v in run.items()]
            out.append(" ~ ".join(parts))
            run.clear()

    def flush_last() -> None:
        nonlocal last, last_n
        if last is not None:
            out.append(f"{last}×{last_n}" if last_n > 1 else last)
        last, last_n = None, 0

    for event in events:
        tok = token(event)
        if tok in _STREAM_TOKENS:
            flush_last()
            run[tok] = run.get(tok, 0) + 1
            continue
        flush_run()
        if tok == last:
            last_n += 1
        else:
            flush_last()
            last, last_n = tok, 1
    flush_run()
    flush_last()
    return out


# -- parity rules ------------------------------------------------------------------------


def check_parity(
    events: list[Event], caps: Capabilities, fmt: AudioFormat, *, ended: bool = True
) -> None:
    """The rules every adapter obeys in every scenario (AssertionError names the rule)."""
    assert events, "no event at all"
    assert isinstance(events[0], Connected), f"first event is {events[0].name}, not connected"
    assert sum(isinstance(e, Connected) for e in events) == 1, "connected more than once"
    assert events[0].capabilities == caps, "connected carries other capabilities"
    n_disc = sum(isinstance(e, Disconnected) for e in events)
    if ended:
        assert n_disc == 1, f"disconnected {n_disc} times, expected exactly once"
        assert isinstance(events[-1], Disconnected), f"last event is {events[-1].name}"
    else:
        assert n_disc == 0, "disconnected before the scenario ended the call"
    for i, e in enumerate(events):
        if isinstance(e, AudioChunk):
            assert e.format == fmt, f"audio-chunk #{i} in {e.format}, call is {fmt}"
            assert len(e.audio) == fmt.bytes_per_frame, (
                f"audio-chunk #{i} has {len(e.audio)} bytes, a frame is {fmt.bytes_per_frame}"
            )
        elif isinstance(e, Interruption):
            assert caps.interruption, "interruption emitted but capabilities declare none"
        elif isinstance(e, Transcript):
            if e.role == "caller":
                assert caps.caller_transcript, "caller transcript, capabilities declare none"
            else:
                assert caps.agent_transcript, "agent transcript, capabilities declare none"
        elif isinstance(e, Steering):
            assert caps.steering, "steering event, capabilities declare no steering"
        elif isinstance(e, SpeechStarted | SpeechEnded):
            want = "provider" if caps.server_vad else "local-vad"
            assert e.source == want, f"{e.name} from {e.source}, capabilities say {want}"
        elif isinstance(e, Error) and e.fatal:
            rest = events[i + 1 :]
            assert rest and all(isinstance(r, Disconnected) for r in rest), (
                "a fatal error must be followed by disconnected only"
            )
    started = [e for e in events if isinstance(e, SpeechStarted | SpeechEnded)]
    for a, b in itertools.pairwise(started):
        assert a.name != b.name, f"two {a.name} in a row"
