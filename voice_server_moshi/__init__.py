"""voice-server-moshi: Kyutai's Moshi as a voice model for turn-based telephony voice-servers.

The public contract lives in small modules: :mod:`~voice_server_moshi.events`,
:mod:`~voice_server_moshi.adapter`, :mod:`~voice_server_moshi.hookspecs`,
:mod:`~voice_server_moshi.registry` and the extension points
(:mod:`~voice_server_moshi.vads`, :mod:`~voice_server_moshi.modes.protocol`). What a host
handles, the events an adapter emits and the errors it raises, steering included
(:class:`SteerableAdapter`, the :class:`Steering` event and its errors), is exported here
too (as httpx exports its exceptions), so ``from voice_server_moshi import ConnectError``
works.
"""

from __future__ import annotations

from .adapter import BaseAdapter, SteerableAdapter, VoiceModelAdapter, VoiceModelConfig
from .capabilities import Capabilities
from .errors import (
    ConnectError,
    ConnectTimeoutError,
    LifecycleError,
    ServerBusyError,
    SettingsError,
    SteeringRequestError,
    SteeringUnsupportedError,
    UnknownNameError,
    VoiceServerMoshiError,
)
from .events import (
    AudioChunk,
    Connected,
    Disconnected,
    Error,
    Event,
    Interruption,
    Role,
    SpeechEnded,
    SpeechStarted,
    Steering,
    Transcript,
)
from .formats import AudioFormat
from .modes.callbacks import HostCallbacks, SteeringCallbacks
from .modes.protocol import Mode
from .registry import Registry, load_registry
from .vads import Vad, VadConfig, VadFactory, VadTransition

__version__ = "0.1.0"

__all__ = [
    "AudioChunk",
    "AudioFormat",
    "BaseAdapter",
    "Capabilities",
    "ConnectError",
    "ConnectTimeoutError",
    "Connected",
    "Disconnected",
    "Error",
    "Event",
    "HostCallbacks",
    "Interruption",
    "LifecycleError",
    "Mode",
    "Registry",
    "Role",
    "ServerBusyError",
    "SettingsError",
    "SpeechEnded",
    "SpeechStarted",
    "SteerableAdapter",
    "Steering",
    "SteeringCallbacks",
    "SteeringRequestError",
    "SteeringUnsupportedError",
    "Transcript",
    "UnknownNameError",
    "Vad",
    "VadConfig",
    "VadFactory",
    "VadTransition",
    "VoiceModelAdapter",
    "VoiceModelConfig",
    "VoiceServerMoshiError",
    "__version__",
    "load_registry",
]
