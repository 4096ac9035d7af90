"""The scripted Moshi peer for tests: :class:`~voice_server_moshi.moshi.scripted.ScriptedTransport`
(one scripted transport for tests, the contract suite, the corpus runner and
``call --scripted-agent``; it lives with the Moshi transports because production
commands use it too)."""

from __future__ import annotations

from ..moshi.scripted import ScriptedTransport

__all__ = ["ScriptedTransport"]
