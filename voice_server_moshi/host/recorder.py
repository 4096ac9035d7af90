"""A host's callbacks that record everything, with call time and wall time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import AudioChunk, Event, Role, Transcript


@dataclass(frozen=True, slots=True)
class Record:
    """One timeline entry: a host callback (``kind="callback"``) or adapter event."""

    t_ms: float  # call time
    name: str
    kind: str
    wall_ms: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t_ms": round(self.t_ms, 1), "name": self.name, "kind": self.kind,
                "wall_ms": round(self.wall_ms, 1), **self.data}


class Recorder:
    """Implements :class:`~voice_server_moshi.modes.callbacks.HostCallbacks`.

    ``now_ms`` gives the call time for adapter events (the mode's clock). Agent audio is kept
    whole in :attr:`agent_audio`; ``record_audio_frames`` also puts one record per frame in
    the timeline.
    """

    def __init__(self, now_ms: Callable[[], float] = lambda: 0.0,
                 record_audio_frames: bool = False) -> None:
        self.records: list[Record] = []
        self.agent_audio = bytearray()
        self.now_ms = now_ms
        self.record_audio_frames = record_audio_frames
        self.on_turn_end_hooks: list[Callable[[], None]] = []
        self._wall0 = time.perf_counter()

    def _add(self, t_ms: float, name: str, kind: str = "callback", **data: Any) -> None:
        wall = 1000.0 * (time.perf_counter() - self._wall0)
        self.records.append(Record(t_ms, name, kind, wall, data))

    def names(self, kind: str = "callback") -> list[str]:
        return [r.name for r in self.records if r.kind == kind]

    def of(self, name: str) -> list[Record]:
        return [r for r in self.records if r.name == name]

    def caller_words(self) -> list[str]:
        """Final caller transcript words so far (empty without caller transcripts)."""
        return [str(r.data.get("text", "")) for r in self.records
                if r.name == "transcript" and r.data.get("role") == "caller"
                and r.data.get("final")]

    def say_request(self, t_ms: float, text: str, asked_ms: float | None = None) -> None:
        """The host asked the agent to say ``text`` (steering, ADR 0070)."""
        extra: dict[str, Any] = {} if asked_ms is None else {"asked_ms": asked_ms}
        self._add(t_ms, "say-request", text=text, **extra)

    # -- HostCallbacks -----------------------------------------------------------------

    def on_user_turn_started(self, t_ms: float, barge_in: bool) -> None:
        self._add(t_ms, "user-turn-started", barge_in=barge_in,
                  decided_ms=round(self.now_ms(), 1))

    def on_user_turn_ended(self, t_ms: float) -> None:
        self._add(t_ms, "user-turn-ended", decided_ms=round(self.now_ms(), 1))
        for hook in self.on_turn_end_hooks:
            hook()

    def on_agent_audio(self, audio: bytes, t_ms: float) -> None:
        self.agent_audio += audio
        if self.record_audio_frames:
            self._add(t_ms, "agent-audio", bytes=len(audio))

    def on_agent_turn_started(self, t_ms: float, steered: bool = False) -> None:
        self._add(t_ms, "agent-turn-started", decided_ms=round(self.now_ms(), 1),
                  steered=steered)

    def on_agent_steering(self, request_id: str, status: str, t_ms: float) -> None:
        """Progress of a say request (the mode's optional steering callback, ADR 0070)."""
        self._add(t_ms, "agent-steering", request_id=request_id, status=status)

    def on_agent_turn_ended(self, t_ms: float, interrupted: bool) -> None:
        self._add(t_ms, "agent-turn-ended", interrupted=interrupted,
                  decided_ms=round(self.now_ms(), 1))

    def on_transcript(self, role: Role, text: str, final: bool, t_ms: float) -> None:
        self._add(t_ms, "transcript", role=role, text=text, final=final)

    def on_error(self, code: str, message: str, fatal: bool) -> None:
        self._add(self.now_ms(), "error", code=code, message=message, fatal=fatal)

    def on_disconnected(self, reason: str, t_ms: float) -> None:
        self._add(t_ms, "disconnected", reason=reason)

    # -- adapter events (what the host's event hooks see) ------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, AudioChunk | Transcript):
            # Audio: one per 20 ms, kept in the agent track. Transcripts: the ``transcript``
            # callback carries the same text with call time.
            return
        data = {k: getattr(event, k) for k in getattr(event, "__slots__", ())}
        data.pop("capabilities", None)
        if "t_ms" in data:
            data["stream_t_ms"] = data.pop("t_ms")  # the event's own time, e.g. VAD onset
        self._add(self.now_ms(), event.name, "event", **{
            k: v for k, v in data.items() if isinstance(v, str | int | float | bool | None)
        })
