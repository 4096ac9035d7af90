"""Protocol-faithful fake vendor peers: real WebSocket servers on loopback.

Each is an async context manager yielding a fake whose ``url`` is the base URL to give the
adapter (or the vendor's SDK); REST endpoints are added to a ``respx`` router with
``fake.mock_rest(router)``.
"""

from .elevenlabs import FakeElevenLabs, fake_elevenlabs
from .openai_realtime import FakeOpenAIRealtime, fake_openai_realtime
from .phonic import FakePhonic, fake_phonic

__all__ = [
    "FakeElevenLabs",
    "FakeOpenAIRealtime",
    "FakePhonic",
    "fake_elevenlabs",
    "fake_openai_realtime",
    "fake_phonic",
]
