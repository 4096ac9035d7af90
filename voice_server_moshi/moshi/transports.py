"""The Moshi transports by name: a factory registry instead of an if/else over a closed set.

Plugins add transports through the ``voice_server_register_moshi_transports`` hook::

    @hookimpl
    def voice_server_register_moshi_transports(register):
        register("my-link", MyTransport, description="...")   # MyTransport(MoshiSettings)

and a host selects one with ``transport = "my-link"`` in its ``[moshi]`` section. This
package registers ``"remote"`` (Kyutai's WebSocket protocol, needs ``url``) and
``"embedded"`` (the in-process batched engine, the ``embedded`` extra); ``"auto"`` means
remote when ``url`` is set, else embedded. A factory is called once per call, when the
adapter connects, and returns a new :class:`~.transport.MoshiTransport`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import ConnectError
from ..registry import _CURRENT, default_registry
from .settings import MoshiSettings
from .transport import MoshiTransport

__all__ = ["TransportFactory", "embedded_transport", "remote_transport", "resolve_transport"]

#: Makes one call's transport from the adapter's settings.
TransportFactory = Callable[[MoshiSettings], MoshiTransport]


def remote_transport(settings: MoshiSettings) -> MoshiTransport:
    """Kyutai's ``/api/chat`` WebSocket protocol to a Moshi server at ``settings.url``."""
    from .remote import RemoteTransport

    return RemoteTransport(settings)


def embedded_transport(settings: MoshiSettings) -> MoshiTransport:
    """A slot of the in-process batched engine; a clear ConnectError without the extra."""
    try:
        module = importlib.import_module("voice_server_moshi.moshi.embedded")
    except ImportError as exc:
        raise ConnectError(
            "the embedded Moshi transport needs the 'embedded' extra: pip install "
            f"'voice-server-moshi[embedded]' (or set moshi.url for a remote server); {exc}"
        ) from None
    transport: MoshiTransport = module.EmbeddedTransport(settings)
    return transport


_BUILTIN: dict[str, TransportFactory] = {
    "remote": remote_transport,
    "embedded": embedded_transport,
}


def resolve_transport(settings: MoshiSettings, *, section: str = "moshi") -> TransportFactory:
    """The factory of ``settings.transport`` (``auto`` resolved) in the registry creating
    the adapter now (else the installed plugins'); a SettingsError listing the registered
    names when there is none."""
    name = settings.resolved_transport
    registry = _CURRENT.get()
    if registry is None and name in _BUILTIN:
        return _BUILTIN[name]  # this package's own: no need to load every plugin for them
    return (registry or default_registry()).transport_factory(name, section=section)
