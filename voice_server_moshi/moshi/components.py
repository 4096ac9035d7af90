"""The Moshi adapter's named parts, its caller VAD and its transport, found by name.

A name resolves in the registry creating the adapter (``registry.create_adapter``), else in
the installed plugins' (:func:`~voice_server_moshi.registry.current_registry`), and the
host's ``vad_settings`` / ``transport_settings`` tables are parsed into the settings class
the part registered (``register(..., settings=Cls)``). This package's own parts, asked for
by name with no settings outside a registry, need no plugin loading at all.

The lookups live here, above :mod:`~voice_server_moshi.registry`, :mod:`~voice_server_moshi.vads`
and :mod:`.transports`, so that neither extension point imports the registry (ADR 0115).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..registry import active_registry, default_registry
from ..vads import VadFactory, energy_vad
from .settings import MoshiSettings
from .transports import BUILTIN_TRANSPORTS, TransportFactory

__all__ = ["resolve_transport", "resolve_vad"]


def resolve_vad(name: str, settings: Mapping[str, Any] | None = None, *,
                section: str = "moshi") -> VadFactory:
    """The caller VAD ``name`` with its ``settings`` bound in; a
    :class:`~voice_server_moshi.errors.SettingsError` listing the registered names when
    there is none, or what is wrong with the settings."""
    registry = active_registry()
    if registry is None and name == "energy" and not settings:
        return energy_vad
    return (registry or default_registry()).vad_factory(name, settings, section=section)


def resolve_transport(settings: MoshiSettings, *, section: str = "moshi") -> TransportFactory:
    """The factory of ``settings.transport`` (``auto`` resolved) with
    ``settings.transport_settings`` bound in, as for :func:`resolve_vad`."""
    name = settings.resolved_transport
    registry = active_registry()
    if registry is None and name in BUILTIN_TRANSPORTS and not settings.transport_settings:
        return BUILTIN_TRANSPORTS[name]
    return (registry or default_registry()).transport_factory(
        name, settings.transport_settings, section=section)
