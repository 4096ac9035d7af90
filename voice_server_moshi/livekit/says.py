"""The says LiveKit has scheduled and not yet handed to the session (ADR 0125).

LiveKit plays one speech at a time and calls ``RealtimeSession.say`` only once the speech
in flight has ended; with Moshi that speech is a turn (or, with ``between_turns="play"``,
the stream until the next turn), so a say would wait for Moshi's next agent turn. The
``AgentSession`` announces each say at once (``speech_created``, source ``"say"``): the
session follows those events and makes way (ends the generation in flight) for the say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.agents import AgentSession, SpeechCreatedEvent

__all__ = ["WaitingSays"]


class WaitingSays:
    def __init__(self, make_way: Callable[[str], None]) -> None:
        self._make_way = make_way
        self._session: AgentSession[Any] | None = None
        self._handles: list[Any] = []  # the says' SpeechHandles, in scheduling order

    @property
    def waiting(self) -> bool:
        return bool(self._handles)

    def follow_owner(self, callback: Callable[..., Any]) -> None:
        """LiveKit's AgentActivity subscribes its bound methods to the RealtimeSession
        right after making it: the only way to learn the AgentSession (no public handle)."""
        agent_session = getattr(getattr(callback, "__self__", None), "session", None)
        if isinstance(agent_session, AgentSession):
            self.follow(agent_session)

    def follow(self, agent_session: AgentSession[Any]) -> None:
        if agent_session is self._session:
            return
        self.stop()
        self._session = agent_session
        agent_session.on("speech_created", self._created)

    def stop(self) -> None:
        if self._session is not None:
            self._session.off("speech_created", self._created)
            self._session = None
        self._handles.clear()

    def handed(self) -> None:
        """LiveKit called ``say``: it hands the says over in the order it scheduled them."""
        if self._handles:
            self._handles.pop(0)

    def _created(self, ev: SpeechCreatedEvent) -> None:
        if ev.source != "say" or not ev.user_initiated:
            return  # the session's own turn generations, or a reply LiveKit made
        self._handles.append(ev.speech_handle)
        ev.speech_handle.add_done_callback(self._done)
        self._make_way("say-scheduled")

    def _done(self, handle: Any) -> None:
        if handle in self._handles:  # interrupted or ended before LiveKit called say
            self._handles.remove(handle)
