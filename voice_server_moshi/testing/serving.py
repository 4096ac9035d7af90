"""``serve`` in process for tests: an engine over ``models`` started, a
:class:`~voice_server_moshi.server.app.BatchedServer` on a free loopback port, both stopped
on the way out (needs the embedded extra)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..engine.core import Engine, EngineConfig
from ..engine.models import LoadedModels
from ..server.app import BatchedServer, ServerConfig

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(models: LoadedModels, config: EngineConfig,
                  server_config: ServerConfig | None = None) -> AsyncIterator[BatchedServer]:
    eng = Engine(models, config)
    await asyncio.to_thread(eng.start)
    srv = BatchedServer(eng, server_config or ServerConfig(port=0))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()
        await asyncio.to_thread(eng.stop)
