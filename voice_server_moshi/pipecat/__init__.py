"""Moshi inside Pipecat: a frame processor built on the ``moshi`` adapter and the
``full-duplex`` mode, and a Twilio Media Streams endpoint (``pipecat-twilio``).

Needs the ``[pipecat]`` extra (``pipecat-ai[websocket]``, ``uvicorn``). Import
:class:`~voice_server_moshi.pipecat.service.MoshiService` from
``voice_server_moshi.pipecat.service``: this package's ``__init__`` stays import-free so
that ``import voice_server_moshi`` never pulls Pipecat in.
"""
