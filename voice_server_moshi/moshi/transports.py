"""The Moshi transports by name: a factory registry instead of an if/else over a closed set.

Plugins add transports through the ``voice_server_register_moshi_transports`` hook::

    @hookimpl
    def voice_server_register_moshi_transports(register):
        register("my-link", MyTransport, description="...")   # MyTransport(MoshiSettings)

and a host selects one with ``transport = "my-link"`` in its ``[moshi]`` section. One
registered with ``settings=MyLinkSettings`` is called as ``MyTransport(moshi_settings,
link_settings)``, its own settings parsed from the ``transport_settings`` table. This
package registers ``"remote"`` (Kyutai's WebSocket protocol, needs ``url``) and
``"embedded"`` (the in-process batched engine, the ``embedded`` extra); ``"auto"`` means
remote when ``url`` is set, else embedded. A factory is called once per call, when the
adapter connects, and returns a new :class:`~.transport.MoshiTransport`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import ConnectError
from .settings import MoshiSettings
from .transport import MoshiTransport

__all__ = ["BUILTIN_TRANSPORTS", "TransportFactory", "embedded_transport", "remote_transport"]

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


#: This package's own transports (also registered by its plugin, :mod:`voice_server_moshi.plugin`).
BUILTIN_TRANSPORTS: dict[str, TransportFactory] = {
    "remote": remote_transport,
    "embedded": embedded_transport,
}
