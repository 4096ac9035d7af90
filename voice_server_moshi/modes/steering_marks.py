"""Which agent speech the host steered, for the full-duplex mode (ADR 0070).

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

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import SteeringUnsupportedError
from ..events import Steering

#: How long after a request ended a starting agent turn still counts as steered (ms):
#: about the deepest the playout buffer runs.
GRACE_MS = 400.0


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class SteeringMarks:
    def __init__(self, host: Any, grace_ms: float = GRACE_MS) -> None:
        self.grace_ms = grace_ms
        self._active: set[str] = set()
        self._ended_ms: float | None = None
        start = getattr(host, "on_agent_turn_started", None)
        self._turn_kw = start is not None and _accepts_keyword(start, "steered")
        #: The host has the optional ``on_agent_steering`` callback.
        self.notify = callable(getattr(host, "on_agent_steering", None))
        #: (call ms, request id, status) of every steering event.
        self.history: list[tuple[float, str, str]] = []
        self.steered_turns = 0

    @staticmethod
    def can_steer(adapter: Any) -> bool:
        caps = getattr(adapter, "capabilities", None)
        return bool(getattr(caps, "steering", False))

    def require(self, adapter: Any) -> None:
        if not self.can_steer(adapter):
            name = getattr(adapter, "adapter_name", type(adapter).__name__)
            raise SteeringUnsupportedError(
                f"full-duplex: the {name} adapter cannot be steered (capabilities.steering "
                "is False), so create_response(text=/audio=) cannot reach the model"
            )

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
