"""Plugin discovery: inline plugins, this package through its entry point, the block-list."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pytest

from voice_server_moshi import BaseAdapter, Mode, VoiceModelAdapter, VoiceModelConfig
from voice_server_moshi.errors import SettingsError, UnknownNameError
from voice_server_moshi.hookspecs import Register, hookimpl
from voice_server_moshi.modes.overlap import OverlapDecision
from voice_server_moshi.registry import BLOCKED_ENV, load_registry


@dataclass(frozen=True)
class ToySettings:
    greeting: str = "hi"


class ToyAdapter(BaseAdapter):
    def __init__(self, settings: ToySettings) -> None:
        super().__init__()
        self.settings = settings

    async def _open(self, config: VoiceModelConfig) -> str:
        return "toy"

    async def _send_audio(self, chunk: bytes) -> None:
        pass

    async def _close(self) -> None:
        pass


class ToyMode:
    """The whole Mode protocol, doing nothing."""

    mode_name = "toy-mode"

    def __init__(self, settings: None, **kwargs: Any) -> None:
        self.settings, self.kwargs = settings, kwargs
        self.t_ms = 0.0
        self.response_wall_ms: list[float] = []
        self.arrival_ms: list[float] = []

    async def start(self) -> None: ...
    def push_caller_audio(self, chunk: bytes) -> None: ...
    async def tick(self) -> None: ...
    async def settle(self, max_lag_ms: float = 160.0, timeout_s: float = 10.0) -> bool:
        return True
    async def stop(self, reason: str = "host") -> None: ...
    async def wait_ended(self) -> None: ...
    @property
    def ended(self) -> bool:
        return False
    def create_response(self, **request: Any) -> None: ...
    def commit_turn(self, **request: Any) -> None: ...
    def cancel_response(self, **request: Any) -> None: ...
    @property
    def overlaps(self) -> list[OverlapDecision]:
        return []
    def stats(self) -> dict[str, Any]:
        return {}


class ToyPlugin:
    @hookimpl
    def voice_server_register_adapters(self, register: Register) -> None:
        register("toy", ToyAdapter, settings=ToySettings, description="toy")
        register("not-an-adapter", lambda s: ("toy-adapter", s))

    @hookimpl
    def voice_server_register_modes(self, register: Register) -> None:
        register("toy-mode", ToyMode)
        register("half-a-mode", lambda s, **kw: object())


def test_inline_plugin_registers_adapter_and_mode() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    adapter = reg.create_adapter("toy", {"greeting": "hello"})
    assert isinstance(adapter, ToyAdapter) and adapter.settings == ToySettings("hello")
    assert isinstance(adapter, VoiceModelAdapter)
    mode = reg.create_mode("toy-mode", None, host="h")
    assert isinstance(mode, ToyMode) and isinstance(mode, Mode)
    assert mode.kwargs == {"host": "h"}
    assert reg.adapters["toy"].description == "toy"


def test_factories_must_return_what_the_protocols_promise() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    with pytest.raises(TypeError, match=r"'not-an-adapter' .* returned tuple, not a "
                       "VoiceModelAdapter"):
        reg.create_adapter("not-an-adapter")
    with pytest.raises(TypeError, match="lacks part of the Mode protocol"):
        reg.create_mode("half-a-mode")


def test_unknown_names_list_what_is_available() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    with pytest.raises(UnknownNameError,
                       match=r"no adapter named 'tyo'; available: not-an-adapter, toy"):
        reg.create_adapter("tyo", {})
    with pytest.raises(UnknownNameError,
                       match=r"no mode named 'x'; available: half-a-mode, toy-mode"):
        reg.create_mode("x")


def test_invalid_settings_say_what_is_wrong() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    with pytest.raises(SettingsError, match=r"greeting: expected str, got 3"):
        reg.create_adapter("toy", {"greeting": 3})
    with pytest.raises(SettingsError, match="takes no settings"):
        reg.create_mode("toy-mode", {"a": 1})
    with pytest.raises(SettingsError, match="must be a mapping"):
        reg.create_adapter("toy", ["greeting"])


def test_duplicate_names_are_refused() -> None:
    class Twin(ToyPlugin):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        load_registry(plugins=[ToyPlugin(), Twin()], entry_points=False)


def test_check_pending_rejects_unknown_hooks() -> None:
    class Typo:
        @hookimpl
        def voice_server_register_adaptors(self, register: Any) -> None: ...

    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError):
        load_registry(plugins=[Typo()], entry_points=False)


def test_this_package_is_found_through_its_installed_entry_point() -> None:
    eps = [ep for ep in entry_points(group="voice_server") if ep.name == "moshi"]
    assert eps and eps[0].value == "voice_server_moshi.plugin"
    reg = load_registry(blocked=[])
    assert reg.adapters["moshi"].plugin == "moshi"
    assert "moshi" in {reg.pm.get_name(p) for p in reg.pm.get_plugins()}


def test_blocked_plugin_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCKED_ENV, "moshi, other")
    reg = load_registry()
    assert "moshi" not in reg.adapters
    assert reg.pm.is_blocked("moshi")
    with pytest.raises(UnknownNameError, match="available: \\(none"):
        reg.create_adapter("moshi", {})


def test_settings_are_validated_for_the_moshi_adapter() -> None:
    reg = load_registry(blocked=[])
    with pytest.raises(SettingsError, match="slots: must be >= 1"):
        reg.create_adapter("moshi", {"slots": 0})
