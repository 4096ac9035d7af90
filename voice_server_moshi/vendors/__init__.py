"""Reference adapters for the host's existing vendors, on the same contract as Moshi.

- ``openai-realtime``: :class:`~.openai_realtime.OpenAIRealtimeAdapter` (GA Realtime API)
- ``elevenlabs``: :class:`~.elevenlabs.ElevenLabsAdapter` (Agents Platform)
- ``phonic``: :class:`~.phonic.PhonicAdapter` (speech-to-speech)

Their settings live in :mod:`.settings` (importable without any transport code); their fake
peers in :mod:`voice_server_moshi.testing`.
"""
