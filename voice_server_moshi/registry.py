"""Plugin discovery: a pluggy ``PluginManager`` loaded from the ``voice_server`` entry points.

Set ``VOICE_SERVER_BLOCKED_PLUGINS`` to a comma-separated list of entry-point names (for
example ``moshi``) to keep those plugins from loading.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._log import get_logger
from .errors import SettingsError, UnknownNameError
from .settings import parse_settings

BLOCKED_ENV = "VOICE_SERVER_BLOCKED_PLUGINS"

if TYPE_CHECKING:
    from .adapter import VoiceModelAdapter
    from .modes.protocol import Mode
    from .moshi.transports import TransportFactory
    from .vads import VadFactory

log = get_logger(__name__)

#: The registry whose ``create_*`` is running: components made by a registry look up the
#: other components they name (a Moshi adapter's ``vad = "name"``) in that same registry
#: (:func:`active_registry`).
_CURRENT: ContextVar[Registry | None] = ContextVar("voice_server_registry", default=None)


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered adapter, mode or VAD."""

    name: str
    factory: Callable[..., Any]
    settings: type[Any] | None
    description: str
    plugin: str


class Registry:
    """Adapters, modes, caller VADs and Moshi transports registered by the loaded plugins."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.adapters: dict[str, Registration] = {}
        self.modes: dict[str, Registration] = {}
        self.vads: dict[str, Registration] = {}
        self.moshi_transports: dict[str, Registration] = {}
        self._collect()

    def _collect(self) -> None:
        kinds = (
            (self.pm.hook.voice_server_register_adapters, self.adapters, "adapter"),
            (self.pm.hook.voice_server_register_modes, self.modes, "mode"),
            (self.pm.hook.voice_server_register_vads, self.vads, "VAD"),
            (self.pm.hook.voice_server_register_moshi_transports, self.moshi_transports,
             "transport"),
        )
        for _, target, _ in kinds:
            target.clear()
        for plugin in self.pm.get_plugins():
            name = self.pm.get_name(plugin) or repr(plugin)
            for hook, target, kind in kinds:
                impls = [i for i in hook.get_hookimpls() if i.plugin is plugin]
                for impl in impls:
                    impl.function(register=self._registrar(target, kind, name))

    @staticmethod
    def _registrar(
        target: dict[str, Registration], kind: str, plugin: str
    ) -> hookspecs.Register:
        def register(
            name: str,
            factory: Any,
            *,
            settings: type[Any] | None = None,
            description: str = "",
        ) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"plugin {plugin!r} registered a {kind} with an empty name")
            if name in target:
                raise ValueError(
                    f"{kind} {name!r} registered twice: by {target[name].plugin!r} and {plugin!r}"
                )
            if not callable(factory):
                raise TypeError(f"{kind} {name!r} from {plugin!r}: factory is not callable")
            target[name] = Registration(name, factory, settings, description, plugin)

        return register

    @staticmethod
    def _settings(reg: Registration, kind: str, raw: Mapping[str, Any] | Any | None,
                  section: str | None = None) -> Any:
        section = section or f"{kind} {reg.name!r}"
        if reg.settings is None:
            if raw:
                raise SettingsError(section, [f"{kind} {reg.name!r} takes no settings"])
            return None
        if isinstance(raw, reg.settings):
            return raw
        if raw is not None and not isinstance(raw, Mapping):
            raise SettingsError(section, [f"settings must be a mapping, got {type(raw).__name__}"])
        return parse_settings(reg.settings, raw, section=section)

    def create_adapter(
        self, name: str, settings: Mapping[str, Any] | object | None = None
    ) -> VoiceModelAdapter:
        """A new adapter ``name`` with validated ``settings`` (a mapping or the dataclass)."""
        from .adapter import VoiceModelAdapter

        reg = self.adapters.get(name)
        if reg is None:
            raise UnknownNameError("adapter", name, list(self.adapters))
        with self.active():
            adapter = reg.factory(self._settings(reg, "adapter", settings))
        if not isinstance(adapter, VoiceModelAdapter):
            raise TypeError(f"adapter {name!r} from plugin {reg.plugin!r}: its factory returned "
                            f"{type(adapter).__name__}, not a VoiceModelAdapter")
        return adapter

    def create_mode(
        self, name: str, settings: Mapping[str, Any] | object | None = None, **kwargs: Any
    ) -> Mode:
        """A new orchestration mode ``name``; ``kwargs`` go to the mode's factory (the
        full-duplex mode takes ``adapter``, ``host``, ``config`` and ``clock``)."""
        from .modes.protocol import Mode

        reg = self.modes.get(name)
        if reg is None:
            raise UnknownNameError("mode", name, list(self.modes))
        with self.active():
            mode = reg.factory(self._settings(reg, "mode", settings), **kwargs)
        if not isinstance(mode, Mode):
            raise TypeError(f"mode {name!r} from plugin {reg.plugin!r}: its factory returned "
                            f"{type(mode).__name__}, which lacks part of the Mode protocol")
        return mode

    def _named(self, table: dict[str, Registration], what: str, key: str, name: str,
               section: str) -> Registration:
        reg = table.get(name)
        if reg is None:
            known = ", ".join(sorted(table)) or "(none)"
            raise SettingsError(section, [f"{key}: no {what} named {name!r}; registered: {known}"])
        return reg

    def vad_factory(self, name: str, settings: Mapping[str, Any] | object | None = None, *,
                    section: str = "moshi") -> VadFactory:
        """The factory of the caller VAD ``name``, its ``settings`` (the host's
        ``vad_settings``) parsed into the class it registered and bound in; a
        :class:`SettingsError` of ``section`` naming the registered VADs when there is
        none, or listing what is wrong with the settings."""
        reg = self._named(self.vads, "VAD", "vad", name, section)
        parsed = self._settings(reg, "VAD", settings, f"{section}.vad_settings")
        factory: VadFactory = reg.factory if reg.settings is None else _bind(reg, parsed)
        return factory

    def transport_factory(self, name: str, settings: Mapping[str, Any] | object | None = None,
                          *, section: str = "moshi") -> TransportFactory:
        """The factory of the Moshi transport ``name``, its ``settings`` (the host's
        ``transport_settings``) parsed and bound in as for :meth:`vad_factory`."""
        reg = self._named(self.moshi_transports, "transport", "transport", name, section)
        parsed = self._settings(reg, "transport", settings, f"{section}.transport_settings")
        factory: TransportFactory = reg.factory if reg.settings is None else _bind(reg, parsed)
        return factory

    @contextmanager
    def active(self) -> Iterator[Registry]:
        """Make this the registry components look names up in (see :func:`current_registry`)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def check_pending(self) -> None:
        """Raise if a loaded plugin implements a hook this project does not specify."""
        self.pm.check_pending()


def _bind(reg: Registration, settings: Any) -> Callable[[Any], Any]:
    """A one-argument factory: ``reg.factory(arg, settings)`` (a VAD's config or a
    transport's Moshi settings first, its own settings second)."""
    def factory(arg: Any) -> Any:
        return reg.factory(arg, settings)

    factory.__qualname__ = factory.__name__ = f"{reg.name}<settings>"
    return factory


def blocked_plugins(env: Mapping[str, str] | None = None) -> list[str]:
    raw = (env if env is not None else os.environ).get(BLOCKED_ENV, "")
    return [n.strip() for n in raw.split(",") if n.strip()]


def load_registry(
    *,
    plugins: Iterable[object] = (),
    entry_points: bool = True,
    blocked: Iterable[str] | None = None,
) -> Registry:
    """A registry of every plugin found through entry points, plus ``plugins`` given inline.

    ``blocked`` (default: ``$VOICE_SERVER_BLOCKED_PLUGINS``) names plugins not to load.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked if blocked is not None else blocked_plugins():
        pm.set_blocked(name)
    if entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    registry = Registry(pm)
    log.debug(
        "registry_loaded",
        plugins=[pm.get_name(p) for p in pm.get_plugins()],
        adapters=sorted(registry.adapters),
        modes=sorted(registry.modes),
        vads=sorted(registry.vads),
        moshi_transports=sorted(registry.moshi_transports),
    )
    return registry


@cache
def default_registry() -> Registry:
    """The registry of the installed plugins (entry points), loaded once per process."""
    return load_registry()


def active_registry() -> Registry | None:
    """The registry whose ``create_*`` is running now (see :meth:`Registry.active`), or
    None outside one: the names a component's settings give resolve there."""
    return _CURRENT.get()


def current_registry() -> Registry:
    """The registry creating a component right now, else :func:`default_registry`.

    A component made directly (``MoshiAdapter(settings)``, not through
    ``registry.create_adapter``) resolves the names in its settings here.
    """
    return _CURRENT.get() or default_registry()
