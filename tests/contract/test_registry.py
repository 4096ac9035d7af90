"""Plugin discovery: inline plugins, this package through its entry point, the block-list."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pytest

from voice_server_moshi.errors import SettingsError, UnknownNameError
from voice_server_moshi.hookspecs import Register, hookimpl
from voice_server_moshi.registry import BLOCKED_ENV, load_registry


@dataclass(frozen=True)
class ToySettings:
    greeting: str = "hi"


class ToyPlugin:
    @hookimpl
    def voice_server_register_adapters(self, register: Register) -> None:
        register("toy", lambda s: ("toy-adapter", s), settings=ToySettings, description="toy")

    @hookimpl
    def voice_server_register_modes(self, register: Register) -> None:
        register("toy-mode", lambda s, **kw: ("toy-mode", s, kw))


def test_inline_plugin_registers_adapter_and_mode() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    kind, settings = reg.create_adapter("toy", {"greeting": "hello"})
    assert kind == "toy-adapter" and settings == ToySettings("hello")
    assert reg.create_mode("toy-mode", None, host="h") == ("toy-mode", None, {"host": "h"})
    assert reg.adapters["toy"].description == "toy"


def test_unknown_names_list_what_is_available() -> None:
    reg = load_registry(plugins=[ToyPlugin()], entry_points=False)
    with pytest.raises(UnknownNameError, match=r"no adapter named 'tyo'; available: toy"):
        reg.create_adapter("tyo", {})
    with pytest.raises(UnknownNameError, match=r"no mode named 'x'; available: toy-mode"):
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
