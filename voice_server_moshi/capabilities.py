"""What an adapter can emit. Contract tests check that what is declared absent never appears."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Capability flags of a voice-model adapter.

    Attributes:
        full_duplex: The model listens and speaks at the same time and decides by itself when
            to talk; it needs caller audio continuously (silence included) and never waits for
            a "create response" request. False for turn-based providers.
        server_vad: ``speech-started``/``speech-ended`` come from the provider's own voice
            activity detection (``source="provider"``). When False the adapter derives them
            (``source="local-vad"``) or, where it cannot, does not emit them at all.
        interruption: The adapter emits ``interruption`` when the provider cuts its own reply
            short because the caller barged in; the host must flush its playout then.
        caller_transcript: The adapter emits ``transcript`` events with ``role="caller"``.
        agent_transcript: The adapter emits ``transcript`` events with ``role="agent"``.
        steering: The host can make the agent say given text or audio and cancel it
            (``say_text``, ``say_audio``, ``cancel_say``; ADR 0070), and the adapter emits
            ``steering`` events for each request. When False those methods raise
            :class:`~voice_server_moshi.errors.SteeringUnsupportedError`. For Moshi: True
            embedded and against this project's ``serve``, False against Kyutai's servers.
            A remote server says so in its metadata, so the Moshi adapter knows it only once
            connected: read capabilities from the ``connected`` event.
    """

    full_duplex: bool = False
    server_vad: bool = False
    interruption: bool = False
    caller_transcript: bool = False
    agent_transcript: bool = False
    steering: bool = False
