"""OpenAI Realtime steering (ADR 0070): "say this line" as a ``response.create`` whose
instructions ask for exactly that line, one at a time (the service refuses a second
response while one is active), tracked through the response's ``metadata``.

Unlike Moshi's forcing, the model is *asked*: the words it says are its own, and the
agent transcript shows what it did say. Given audio cannot be played as the assistant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..errors import SteeringRequestError, SteeringUnsupportedError
from ..events import Event, Steering

#: The instructions a say request sends, followed by the line.
SAY_INSTRUCTIONS = "Say exactly the following line, word for word, and nothing else: "
METADATA_KEY = "voice_server_say_id"


class OpenAISay:
    """Say requests of one OpenAI Realtime session."""

    def __init__(self, send: Callable[[Mapping[str, Any]], Awaitable[bool]],
                 emit: Callable[[Event], None]) -> None:
        self._send = send
        self._emit = emit
        self._queue: deque[tuple[str, str]] = deque()
        self._current: str | None = None  # sent, not done
        self._response: str | None = None  # its response id
        self._started = False
        self._n = 0
        #: Another response is active (VAD reply): wait for its end.
        self.busy = False

    async def say_text(self, text: str) -> str:
        if not text.strip():
            raise SteeringRequestError("nothing to say: empty text")
        self._n += 1
        rid = f"say-{self._n}"
        self._queue.append((rid, text))
        self._emit(Steering(rid, "queued"))
        await self._next()
        return rid

    async def say_audio(self, *_: Any, **__: Any) -> str:
        raise SteeringUnsupportedError(
            "openai-realtime: the Realtime API cannot play given audio as the assistant's "
            "speech; use say_text (the model is asked to say the line)")

    async def cancel(self, flush: bool = True) -> None:
        if flush:
            while self._queue:
                self._emit(Steering(self._queue.popleft()[0], "cancelled"))
        if self._current is not None:
            await self._send({"type": "response.cancel"})

    async def _next(self) -> None:
        if self._current is not None or self.busy or not self._queue:
            return
        rid, text = self._queue.popleft()
        self._current, self._response, self._started = rid, None, False
        await self._send({"type": "response.create", "response": {
            "instructions": SAY_INSTRUCTIONS + text, "metadata": {METADATA_KEY: rid}}})

    # -- server events -------------------------------------------------------------------

    def on_created(self, response: Mapping[str, Any]) -> None:
        meta = response.get("metadata") or {}
        if self._current is not None and meta.get(METADATA_KEY) == self._current:
            self._response = str(response.get("id"))
        else:
            self.busy = True

    def on_audio(self, response_id: str) -> None:
        if self._current is not None and response_id == self._response and not self._started:
            self._started = True
            self._emit(Steering(self._current, "started"))

    async def on_done(self, response: Mapping[str, Any]) -> None:
        if self._current is not None and response.get("id") == self._response:
            status = response.get("status")
            if status == "completed" and not self._started:
                self._emit(Steering(self._current, "started"))
            self._emit(Steering(self._current, "finished" if status == "completed" else
                                "cancelled" if status == "cancelled" else "failed",
                                message="" if status in ("completed", "cancelled")
                                else f"response {status}"))
            self._current = self._response = None
        else:
            self.busy = False
        await self._next()
