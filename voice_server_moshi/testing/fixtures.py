"""pytest plugin with the project's shared fixtures.

Enable with ``pytest_plugins = ["voice_server_moshi.testing.fixtures"]`` in a root
``conftest.py``. Fixtures that need the ``embedded`` extra (torch, moshi) skip the test
when it is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .moshi_server import MoshiServer, start_moshi_server

__all__ = ["dev_checkpoint", "moshi_server", "moshi_server_factory"]


@pytest.fixture(scope="session")
def dev_checkpoint() -> Path:
    """Directory of the generated tiny Moshi checkpoint (shared, made once per machine)."""
    pytest.importorskip("moshi", reason="needs the 'embedded' extra (moshi, torch)")
    from ..engine.checkpoints import dev_checkpoint_dir

    return dev_checkpoint_dir()


@pytest.fixture(scope="session")
def moshi_server(dev_checkpoint: Path) -> Iterator[MoshiServer]:
    """Kyutai's ``moshi.server`` on the dev checkpoint, shared by the session's tests.

    It serves one call at a time; tests that break it (kill it) use
    :func:`moshi_server_factory` instead.
    """
    server = start_moshi_server(dev_checkpoint)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moshi_server_factory(dev_checkpoint: Path) -> Iterator[Callable[[], MoshiServer]]:
    """Start private ``moshi.server`` instances; all are stopped when the test ends."""
    started: list[MoshiServer] = []

    def start() -> MoshiServer:
        server = start_moshi_server(dev_checkpoint)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
