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
    from .vads import VadFactory

log = get_logger(__name__)

#: The registry whose ``create_*`` is running: components made by a registry look up the
#: other components they name (a Moshi adapter's ``vad = "name"``) in that same registry.
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
    """Adapters, modes and caller VADs registered by the loaded plugins."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.adapters: dict[str, Registration] = {}
        self.modes: dict[str, Registration] = {}
        self.vads: dict[str, Registration] = {}
        self._collect()

    def _collect(self) -> None:
        kinds = (
            (self.pm.hook.voice_server_register_adapters, self.adapters, "adapter"),
            (self.pm.hook.voice_server_register_modes, self.modes, "mode"),
            (self.pm.hook.voice_server_register_vads, self.vads, "VAD"),
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
    def _settings(reg: Registration, kind: str, raw: Mapping[str, Any] | Any | None) -> Any:
        if reg.settings is None:
            if raw:
                raise SettingsError(f"{kind} {reg.name!r}", ["takes no settings"])
            return None
        if isinstance(raw, reg.settings):
            return raw
        if raw is not None and not isinstance(raw, Mapping):
            raise SettingsError(
                f"{kind} {reg.name!r}", [f"settings must be a mapping, got {type(raw).__name__}"]
            )
        return parse_settings(reg.settings, raw, section=f"{kind} {reg.name!r}")

    def create_adapter(self, name: str, settings: Mapping[str, Any] | Any | None = None) -> Any:
        """A new adapter ``name`` with validated ``settings`` (a mapping or the dataclass)."""
        reg = self.adapters.get(name)
        if reg is None:
            raise UnknownNameError("adapter", name, list(self.adapters))
        with self.active():
            return reg.factory(self._settings(reg, "adapter", settings))

    def create_mode(
        self, name: str, settings: Mapping[str, Any] | Any | None = None, **kwargs: Any
    ) -> Any:
        """A new orchestration mode ``name``; ``kwargs`` go to the mode's factory."""
        reg = self.modes.get(name)
        if reg is None:
            raise UnknownNameError("mode", name, list(self.modes))
        with self.active():
            return reg.factory(self._settings(reg, "mode", settings), **kwargs)

    def vad_factory(self, name: str, *, section: str = "moshi") -> VadFactory:
        """The factory of the caller VAD ``name``; a :class:`SettingsError` of ``section``
        naming the registered VADs when there is none."""
        reg = self.vads.get(name)
        if reg is None:
            known = ", ".join(sorted(self.vads)) or "(none)"
            raise SettingsError(section, [f"vad: no VAD named {name!r}; registered: {known}"])
        factory: VadFactory = reg.factory
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
    )
    return registry


@cache
def default_registry() -> Registry:
    """The registry of the installed plugins (entry points), loaded once per process."""
    return load_registry()


def current_registry() -> Registry:
    """The registry creating a component right now, else :func:`default_registry`.

    A component made directly (``MoshiAdapter(settings)``, not through
    ``registry.create_adapter``) resolves the names in its settings here.
    """
    return _CURRENT.get() or default_registry()
