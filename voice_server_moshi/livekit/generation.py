"""One LiveKit generation: the audio and Moshi's words of one agent turn (or one ``say``).

The framework plays a generation as one speech: it forwards the audio stream to the
session's audio output and the text stream to its transcription output, and commits the
text as an assistant message when both streams end (when :meth:`Generation.close` runs).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

from livekit import rtc
from livekit.agents import llm
from livekit.agents.utils import aio, shortuuid

__all__ = ["Generation", "GenerationKind"]

GenerationKind = Literal["turn", "say"]


@dataclass
class Generation:
    kind: GenerationKind
    opened_ms: float  # call time (the mode's clock)
    id: str = field(default_factory=lambda: shortuuid("moshi_"))
    opened_at: float = field(default_factory=time.time)
    message_ch: aio.Chan[llm.MessageGeneration] = field(default_factory=aio.Chan)
    function_ch: aio.Chan[llm.FunctionCall] = field(default_factory=aio.Chan)
    text_ch: aio.Chan[str] = field(default_factory=aio.Chan)
    audio_ch: aio.Chan[rtc.AudioFrame] = field(default_factory=aio.Chan)
    words: list[str] = field(default_factory=list)
    audio_ms: float = 0.0
    #: The steering request a ``say`` generation carries, once the adapter named it.
    request_id: str | None = None
    steering_done: bool = False
    created: llm.GenerationCreatedEvent | None = None

    def event(self, *, user_initiated: bool) -> llm.GenerationCreatedEvent:
        """The ``generation_created`` event: one message with audio and text modalities."""
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = asyncio.Future()
        modalities.set_result(["audio", "text"])
        self.message_ch.send_nowait(llm.MessageGeneration(
            message_id=self.id, text_stream=self.text_ch, audio_stream=self.audio_ch,
            modalities=modalities))
        # No function calls ever: Moshi cannot call tools; the stream ends with the message.
        self.function_ch.close()
        self.created = llm.GenerationCreatedEvent(
            message_stream=self.message_ch, function_stream=self.function_ch,
            user_initiated=user_initiated, response_id=self.id)
        return self.created

    @property
    def closed(self) -> bool:
        return self.audio_ch.closed

    def audio(self, frame: rtc.AudioFrame) -> None:
        if not self.audio_ch.closed:
            self.audio_ch.send_nowait(frame)
            self.audio_ms += frame.duration * 1000.0

    def word(self, text: str) -> None:
        if not self.text_ch.closed:
            # Words are separated by spaces in the text stream, as the framework joins it.
            self.text_ch.send_nowait(text if not self.words else " " + text)
            self.words.append(text)

    def close(self) -> llm.ChatMessage | None:
        """End both streams; returns the assistant message it said, if it said words."""
        for ch in (self.text_ch, self.audio_ch, self.message_ch):
            if not ch.closed:
                ch.close()
        if not self.words:
            return None
        return llm.ChatMessage(id=self.id, role="assistant", content=[" ".join(self.words)],
                               created_at=self.opened_at)
