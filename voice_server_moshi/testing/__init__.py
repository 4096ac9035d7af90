"""Test helpers a host can reuse: fake vendor peers (and, in submodules, Moshi fixtures).

``fake_openai_realtime()``, ``fake_elevenlabs()`` and ``fake_phonic()`` are async context
managers running a protocol-faithful fake of each vendor on loopback; see
:mod:`voice_server_moshi.testing.fakes`. Importing this package imports no torch.
"""

from .fakes import (
    FakeElevenLabs,
    FakeOpenAIRealtime,
    FakePhonic,
    fake_elevenlabs,
    fake_openai_realtime,
    fake_phonic,
)

__all__ = [
    "FakeElevenLabs",
    "FakeOpenAIRealtime",
    "FakePhonic",
    "fake_elevenlabs",
    "fake_openai_realtime",
    "fake_phonic",
]
