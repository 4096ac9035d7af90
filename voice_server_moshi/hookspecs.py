"""pluggy hook specifications for project ``voice_server``.

Hooks take a ``register`` callback (the style of Simon Willison's ``llm``)::

    from voice_server_moshi.hookspecs import hookimpl

    @hookimpl
    def voice_server_register_adapters(register):
        register("my-model", MyAdapter, settings=MySettings, description="...")
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

PROJECT = "voice_server"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The ``register`` callback passed to the hooks."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        settings: type[Any] | None = None,
        description: str = "",
    ) -> None: ...


@hookspec
def voice_server_register_adapters(register: Register) -> None:
    """Register voice-model adapter factories: ``register(name, factory, settings=Cls)``.

    ``factory(settings)`` returns a new adapter (one per call); ``settings`` is an instance of
    the registered settings dataclass, parsed and validated from the host's config section.
    """


@hookspec
def voice_server_register_modes(register: Register) -> None:
    """Register orchestration modes: ``register(name, factory, settings=Cls)``.

    ``factory(settings, **kwargs)`` returns a new mode; keyword arguments are the host's
    (for example the adapter and the host callbacks).
    """


@hookspec
def voice_server_register_vads(register: Register) -> None:
    """Register caller VADs: ``register(name, factory, settings=Cls, description="...")``.

    ``factory(config)`` gets a :class:`~voice_server_moshi.vads.VadConfig` and returns a new
    :class:`~voice_server_moshi.vads.Vad` for one call. Hosts select one by name
    (``vad = "name"`` in the ``[moshi]`` section); this package registers ``"energy"``,
    ``"cascade"`` and ``"silero"``. With ``settings=Cls`` it is ``factory(config,
    settings)``, ``settings`` parsed from the host's ``vad_settings`` table in ``[moshi]``.
    """


@hookspec
def voice_server_register_moshi_transports(register: Register) -> None:
    """Register Moshi transports: ``register(name, factory, settings=Cls, description=...)``.

    ``factory(settings)`` gets the adapter's
    :class:`~voice_server_moshi.moshi.settings.MoshiSettings` and returns a new
    :class:`~voice_server_moshi.moshi.transport.MoshiTransport` for one call. Hosts select
    one by name (``transport = "name"`` in ``[moshi]``); this package registers ``"remote"``
    and ``"embedded"``. With ``settings=Cls`` it is ``factory(settings, own)``, ``own``
    parsed from the host's ``transport_settings`` table in ``[moshi]``.
    """
