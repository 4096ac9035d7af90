"""voice-server-moshi: Kyutai's Moshi as a voice model for turn-based telephony voice-servers.

The public contract lives in small modules: :mod:`~voice_server_moshi.events`,
:mod:`~voice_server_moshi.adapter`, :mod:`~voice_server_moshi.hookspecs` and
:mod:`~voice_server_moshi.registry`.
"""

from __future__ import annotations

from .adapter import BaseAdapter, VoiceModelAdapter, VoiceModelConfig
from .capabilities import Capabilities
from .formats import AudioFormat
from .registry import load_registry

__version__ = "0.1.0"

__all__ = [
    "AudioFormat",
    "BaseAdapter",
    "Capabilities",
    "VoiceModelAdapter",
    "VoiceModelConfig",
    "__version__",
    "load_registry",
]
