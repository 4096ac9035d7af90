"""The full-duplex mode's steering (ADR 0070): requests to the adapter, and which agent
speech the host steered.

The adapter reports each say request's progress as ``steering`` events (queued, started,
finished, cancelled, failed), timed by agent audio as it arrives; the mode plays that audio
a playout buffer later. An agent turn that starts while a request is being said, or within
``grace_ms`` after one ended (its last frames are still in the playout buffer), carries
steered speech. The host learns it two ways, both optional so existing hosts keep working:

* ``on_agent_turn_started(t_ms, steered=True)`` when its method accepts a ``steered``
  keyword (otherwise it is called as always, with ``t_ms`` only);
* ``on_agent_steering(request_id, status, t_ms)`` for every steering event, when the host
  has that method.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeGuard

from .._log import get_logger
from ..adapter import BaseAdapter, SteerableAdapter, VoiceModelAdapter
from ..errors import SteeringUnsupportedError
from ..events import Steering
from .callbacks import HostCallbacks, SteeringCallbacks

#: The host's ``on_agent_steering(request_id, status, t_ms)``.
SteeringNotify = Callable[[str, str, float], None]

#: How long after a request ended a starting agent turn still counts as steered (ms):
#: about the deepest the playout buffer runs.
GRACE_MS = 400.0


def _name(adapter: VoiceModelAdapter) -> str:
    """The adapter's registry name (every :class:`BaseAdapter` has one), else its class's."""
    return adapter.adapter_name if isinstance(adapter, BaseAdapter) else type(adapter).__name__


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class SteeringMarks:
    def __init__(self, host: HostCallbacks, grace_ms: float = GRACE_MS,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.grace_ms = grace_ms
        self._on_error = on_error
        self.log = get_logger(__name__)
        self._active: set[str] = set()
        self._ended_ms: float | None = None
        self._turn_kw = _accepts_keyword(host.on_agent_turn_started, "steered")
        #: The host's optional ``on_agent_steering`` callback, when it has one.
        self.notify: SteeringNotify | None = (
            host.on_agent_steering if isinstance(host, SteeringCallbacks) else None)
        #: (call ms, request id, status) of every steering event.
        self.history: list[tuple[float, str, str]] = []
        self.steered_turns = 0

    @staticmethod
    def can_steer(adapter: VoiceModelAdapter) -> TypeGuard[SteerableAdapter]:
        """The adapter has the steering methods and this session can use them."""
        return isinstance(adapter, SteerableAdapter) and adapter.capabilities.steering

    def require(self, adapter: VoiceModelAdapter) -> SteerableAdapter:
        if not self.can_steer(adapter):
            raise SteeringUnsupportedError(
                f"full-duplex: the {_name(adapter)} adapter cannot be steered "
                "(capabilities.steering is False), so create_response(text=/audio=) cannot "
                "reach the model"
            )
        return adapter

    def say(self, adapter: VoiceModelAdapter, text: str | None, audio: bytes | None,
            sample_rate: int) -> asyncio.Task[str]:
        """Start the adapter's say_text / say_audio (see the mode's create_response)."""
        steerable = self.require(adapter)
        if audio is not None:
            coro = steerable.say_audio(audio, text or "", sample_rate=sample_rate)
        elif text is not None and text.strip():
            coro = steerable.say_text(text)
        else:
            raise ValueError("create_response(text=...) needs some text to say")
        return self._task(coro, "create_response")

    def cancel(self, adapter: SteerableAdapter) -> asyncio.Task[str]:
        async def cancel() -> str:
            await adapter.cancel_say(True)
            return ""

        return self._task(cancel(), "cancel_response")

    def _task(self, coro: Coroutine[Any, Any, str], name: str) -> asyncio.Task[str]:
        task = asyncio.get_running_loop().create_task(coro, name=f"full-duplex:{name}")

        def done(t: asyncio.Task[str]) -> None:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                self.log.warning("steering_request_failed", request=name, error=repr(exc))
                if self._on_error is not None:
                    self._on_error(f"{name} failed: {exc}")

        task.add_done_callback(done)
        return task

    @property
    def active(self) -> bool:
        return bool(self._active)

    def on_event(self, event: Steering, now_ms: float) -> None:
        self.history.append((now_ms, event.request_id, event.status))
        if event.status == "started":
            self._active.add(event.request_id)
        elif event.status in ("finished", "cancelled", "failed") and \
                event.request_id in self._active:
            self._active.discard(event.request_id)
            self._ended_ms = now_ms

    def mark_turn(self, t_ms: float) -> bool:
        """An agent turn starts at ``t_ms``: True when the host should hear it is steered."""
        steered = bool(self._active) or (
            self._ended_ms is not None and t_ms - self._ended_ms <= self.grace_ms)
        if steered:
            self.steered_turns += 1
        return steered and self._turn_kw
