"""The voice-model adapter contract: protocol, config, capabilities and the lifecycle base.

Every adapter subclasses :class:`BaseAdapter`, which enforces the lifecycle rules so that no
adapter can break them:

* ``connected`` is the first event, ``disconnected`` the last, emitted exactly once, and
  nothing is emitted after it;
* ``send_audio`` before ``connect`` or after the session ended raises :class:`LifecycleError`;
* a chunk that is not a whole number of samples of the call's format raises ``ValueError``
  and the session goes on;
* a consumer that stops reading ``events()`` cannot grow memory without bound (see
  :mod:`voice_server_moshi._queue` for the drop policy);
* a callback that raises is logged and never breaks the session.

If ``connect`` fails it raises (:class:`ConnectError` and subclasses) and the session emits no
event at all: ``events()`` then ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from ._log import get_logger
from ._queue import EventQueue
from .capabilities import Capabilities
from .errors import LifecycleError, SteeringUnsupportedError
from .events import EVENT_NAMES, Connected, Disconnected, Error, Event
from .formats import AudioFormat

__all__ = [
    "AudioFormat",
    "BaseAdapter",
    "Capabilities",
    "EventCallback",
    "SteerableAdapter",
    "VoiceModelAdapter",
    "VoiceModelConfig",
]

EventCallback = Callable[[Event], Awaitable[None] | None]
State = Literal["new", "connecting", "connected", "closing", "closed"]

#: How long teardown of a transport may take before it is abandoned (never a hang).
TEARDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class VoiceModelConfig:
    """Per-call configuration handed to ``connect``."""

    call_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    audio: AudioFormat = field(default_factory=AudioFormat)
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Who keeps the caller's media continuous (ADR 0140): ``"adapter"`` (the default: an
    #: adapter whose model is clocked by its input fills a stalled caller with silence) or
    #: ``"host"`` (the host sends one frame per frame period and conceals gaps itself, as
    #: the full-duplex mode's jitter buffer does; the adapter then never fills).
    media_clock: Literal["adapter", "host"] = "adapter"


@runtime_checkable
class VoiceModelAdapter(Protocol):
    """What a host drives, one adapter instance per call."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def connect(self, config: VoiceModelConfig) -> None: ...

    async def send_audio(self, chunk: bytes) -> None: ...

    def events(self) -> AsyncIterator[Event]: ...

    def on(self, name: str, callback: EventCallback) -> Callable[[], None]: ...

    async def disconnect(self) -> None: ...


@runtime_checkable
class SteerableAdapter(VoiceModelAdapter, Protocol):
    """An adapter a host can steer (ADR 0070): make the agent say a text or an audio, and
    cancel that. Every :class:`BaseAdapter` has these methods; whether this session can
    use them is ``capabilities.steering`` (they raise :class:`SteeringUnsupportedError`
    when it is False), so check both, as the full-duplex mode does."""

    async def say_text(self, text: str) -> str:
        """Make the agent say ``text``; returns the request id its ``steering`` events
        carry."""
        ...

    async def say_audio(self, audio: bytes, text: str = "", *, sample_rate: int = 24000) -> str:
        """Make the agent say ``audio`` (16-bit LE mono PCM at ``sample_rate``) whose words
        are ``text``; returns the request id."""
        ...

    async def cancel_say(self, flush: bool = True) -> None:
        """Stop the request being said; ``flush`` also drops the queued ones."""
        ...


class BaseAdapter(ABC):
    """Lifecycle, event delivery and validation shared by every adapter.

    Subclasses implement :meth:`_open`, :meth:`_send_audio` and :meth:`_close`, emit events
    with :meth:`_emit`, start background work with :meth:`_spawn`, and end a session from the
    peer side with :meth:`_fail` (fatal error) or :meth:`_peer_closed`.
    """

    #: Registry name of the adapter, e.g. ``"moshi"``.
    adapter_name: ClassVar[str] = "adapter"
    #: Default capabilities of the adapter class; instances may narrow them.
    default_capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, *, max_queued_events: int = 500) -> None:
        self._state: State = "new"
        self._config: VoiceModelConfig | None = None
        self._queue = EventQueue(max_queued_events)
        self._callbacks: list[tuple[str, EventCallback]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._iterating = False
        self._drop_warned = False
        self._teardown_lock = asyncio.Lock()
        self.counters: Counter[str] = Counter()
        self.log = get_logger(f"voice_server_moshi.{self.adapter_name}", adapter=self.adapter_name)

    # -- public contract ---------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self.default_capabilities

    @property
    def state(self) -> State:
        return self._state

    @property
    def config(self) -> VoiceModelConfig:
        if self._config is None:
            raise LifecycleError(f"{self.adapter_name}: not connected yet; call connect() first")
        return self._config

    async def connect(self, config: VoiceModelConfig) -> None:
        if self._state != "new":
            raise LifecycleError(
                f"{self.adapter_name}: connect() called in state {self._state!r}; "
                "an adapter serves one call, create a new one"
            )
        self._config = config
        self.log = self.log.bind(call_id=config.call_id)
        self._state = "connecting"
        self.log.info("connecting", encoding=config.audio.encoding, rate=config.audio.sample_rate)
        try:
            session_id = await self._open(config)
        except BaseException:
            self._state = "closed"
            await self._cancel_tasks()
            self._queue.close()
            raise
        if self._state != "connecting":
            # The peer went away while _open was finishing; _fail already ended it.
            return
        self._state = "connected"
        self._deliver(Connected(session_id=session_id, capabilities=self.capabilities))
        self.log.info("connected", session_id=session_id)

    async def send_audio(self, chunk: bytes) -> None:
        if self._state in ("new", "connecting"):
            raise LifecycleError(
                f"{self.adapter_name}: send_audio() before the session is connected; "
                "await connect() first"
            )
        if self._state != "connected":
            raise LifecycleError(
                f"{self.adapter_name}: send_audio() after the session ended ({self._state})"
            )
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"audio chunk must be bytes, got {type(chunk).__name__}")
        fmt = self.config.audio
        if len(chunk) % fmt.bytes_per_sample:
            raise ValueError(
                f"audio chunk of {len(chunk)} bytes is not whole {fmt.encoding} samples "
                f"({fmt.bytes_per_sample} bytes each); chunk rejected, session continues"
            )
        if not chunk:
            return
        await self._send_audio(bytes(chunk))

    def events(self) -> AsyncIterator[Event]:
        if self._iterating:
            raise LifecycleError(f"{self.adapter_name}: events() already has a consumer")
        self._iterating = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self._queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._iterating = False

    def on(self, name: str, callback: EventCallback) -> Callable[[], None]:
        if name != "*" and name not in EVENT_NAMES:
            raise ValueError(
                f"unknown event name {name!r}; expected '*' or one of {sorted(EVENT_NAMES)}"
            )
        entry = (name, callback)
        self._callbacks.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return unsubscribe

    # -- steering (ADR 0070): adapters with capabilities.steering override these --------

    async def say_text(self, text: str) -> str:
        """Make the agent say ``text`` (queued after earlier requests); returns a request
        id that ``steering`` events then report on. Raises
        :class:`SteeringUnsupportedError` when ``capabilities.steering`` is False."""
        raise self._not_steerable()

    async def say_audio(self, audio: bytes, text: str = "", *, sample_rate: int = 24000) -> str:
        """Make the agent say ``audio`` (16-bit LE mono PCM at ``sample_rate``, e.g. from
        the host's TTS) whose words are ``text``; returns a request id."""
        raise self._not_steerable()

    async def cancel_say(self, flush: bool = True) -> None:
        """Stop the request being said at the next model step; ``flush`` also drops the
        queued ones. Each gets a ``cancelled`` steering event."""
        raise self._not_steerable()

    def _not_steerable(self) -> SteeringUnsupportedError:
        return SteeringUnsupportedError(
            f"{self.adapter_name}: this adapter cannot be steered (capabilities.steering is "
            "False); check capabilities before calling say_text/say_audio/cancel_say"
        )

    async def disconnect(self) -> None:
        if self._state == "new":
            self._state = "closed"
            self._queue.close()
            return
        await self._terminate(reason="client", close_code=1000, error=None)

    # -- for subclasses ----------------------------------------------------------------

    @abstractmethod
    async def _open(self, config: VoiceModelConfig) -> str:
        """Open the session with the peer; return its session id. Raise ConnectError."""

    @abstractmethod
    async def _send_audio(self, chunk: bytes) -> None:
        """Forward validated caller audio (whole samples of the call's format)."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the transport. Must not raise and must not hang (it is time-boxed)."""

    def _emit(self, event: Event) -> None:
        """Deliver an event from the subclass; ignored unless the session is connected."""
        if isinstance(event, Connected | Disconnected):
            raise LifecycleError("connected/disconnected are emitted by BaseAdapter itself")
        if self._state != "connected":
            self.log.debug("event_after_close_dropped", event_name=event.name)
            return
        self._deliver(event)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start background work owned by the session; cancelled at teardown."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.adapter_name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def _fail(
        self,
        code: str,
        message: str,
        *,
        close_code: int | None = None,
        reason: str = "error",
    ) -> None:
        """End the session from the peer side: fatal ``error`` then ``disconnected``."""
        await self._terminate(
            reason=reason,
            close_code=close_code,
            error=Error(code=code, message=message, fatal=True),
        )

    async def _peer_closed(self, *, close_code: int | None, reason: str = "peer") -> None:
        """End the session because the peer ended it normally: ``disconnected``, no error."""
        await self._terminate(reason=reason, close_code=close_code, error=None)

    async def _peer_ended(
        self,
        close_code: int | None,
        clean: bool,
        message: str,
        normal_codes: frozenset[int] = frozenset({1000}),
    ) -> None:
        """The peer's session ended: the one rule for every adapter (ADR 0054). A close
        with a code in ``normal_codes`` ends the call without an error; any other close is
        a fatal ``peer_closed``; no close frame at all (``clean`` False) a fatal
        ``peer_vanished``. ``message`` describes the close for the error."""
        if self._state != "connected":
            return
        if clean and close_code in normal_codes:
            await self._peer_closed(close_code=close_code, reason="peer")
            return
        await self._fail(
            "peer_closed" if clean else "peer_vanished",
            message,
            close_code=close_code,
            reason="peer-error" if clean else "peer-vanished",
        )

    # -- internals ---------------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("background_task_failed", task=task.get_name(), exc_info=exc)
            if self._state == "connected":
                # A crashed background task must not leave the call hanging silently.
                self._spawn(
                    self._fail("internal", f"{task.get_name()} failed: {exc!r}"), "fail"
                )

    async def _terminate(self, *, reason: str, close_code: int | None, error: Error | None) -> None:
        async with self._teardown_lock:
            if self._state in ("closing", "closed"):
                return
            was_connected = self._state == "connected"
            self._state = "closing"
            if error is not None and was_connected:
                self._deliver(error)
                self.log.warning("session_failed", code=error.code, message=error.message)
            try:
                await asyncio.wait_for(self._close(), TEARDOWN_TIMEOUT_S)
            except (TimeoutError, Exception) as exc:
                self.log.warning("teardown_incomplete", error=repr(exc))
            await self._cancel_tasks()
            self._state = "closed"
            if was_connected:
                self._deliver(Disconnected(reason=reason, close_code=close_code))
                self.log.info(
                    "disconnected",
                    reason=reason,
                    close_code=close_code,
                    **{k: v for k, v in sorted(self.counters.items())},
                )
            self._queue.close()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current and not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=TEARDOWN_TIMEOUT_S)

    def _deliver(self, event: Event) -> None:
        if self._queue.put(event):
            self.counters["events_dropped"] = self._queue.dropped
            if not self._drop_warned:
                self._drop_warned = True
                self.log.warning(
                    "slow_event_consumer",
                    detail="event queue full; dropping oldest agent audio first",
                    max_events=self._queue.max_events,
                )
        for name, callback in list(self._callbacks):
            if name not in ("*", event.name):
                continue
            try:
                result = callback(event)
            except Exception:
                self.log.exception("event_callback_failed", event_name=event.name)
                continue
            if inspect.isawaitable(result):
                self._spawn_callback(result, event.name)

    def _spawn_callback(self, awaitable: Awaitable[None], event_name: str) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                self.log.exception("event_callback_failed", event_name=event_name)

        # Not in self._tasks: a callback must still run after disconnected is delivered.
        task = asyncio.get_running_loop().create_task(run())
        _CALLBACK_TASKS.add(task)
        task.add_done_callback(_CALLBACK_TASKS.discard)


_CALLBACK_TASKS: set[asyncio.Task[None]] = set()
