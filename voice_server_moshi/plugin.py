"""This package's pluggy plugin, found through the ``voice_server`` entry point ``moshi``.

Factories import their modules lazily, so loading the plugin never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .hookspecs import Register, hookimpl
from .moshi.settings import MoshiSettings


def _lazy(path: str) -> Any:
    module, _, attr = path.partition(":")

    def factory(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy<{path}>"
    return factory


@hookimpl
def voice_server_register_adapters(register: Register) -> None:
    register(
        "moshi",
        _lazy("voice_server_moshi.moshi.adapter:MoshiAdapter"),
        settings=MoshiSettings,
        description="Kyutai Moshi, full duplex: remote Moshi server or embedded engine",
    )


@hookimpl
def voice_server_register_modes(register: Register) -> None:
    pass
