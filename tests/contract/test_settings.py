from dataclasses import dataclass, field
from typing import Literal

import pytest

from voice_server_moshi.errors import SettingsError
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.settings import describe_settings, parse_settings, redacted


@dataclass(frozen=True)
class Demo:
    name: str
    rate: float = field(default=1.0, metadata={"min": 0.5, "max": 2.0})
    mode: Literal["a", "b"] = "a"
    count: int | None = None
    api_key: str | None = None


def test_parses_and_coerces_int_to_float() -> None:
    s = parse_settings(Demo, {"name": "x", "rate": 2, "count": 3}, section="demo")
    assert s == Demo(name="x", rate=2.0, count=3)
    assert isinstance(s.rate, float)


def test_reports_every_problem_at_once_and_redacts_secrets() -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(
            Demo,
            {"rate": 5, "mode": "c", "count": True, "colour": "red", "api_key": 123},
            section="demo",
        )
    problems = "\n".join(info.value.problems)
    assert "name: required" in problems
    assert "rate: must be <= 2.0, got 5.0" in problems
    assert "mode: expected 'a' | 'b', got 'c'" in problems
    assert "count: expected int | null, got True" in problems
    assert "unknown key 'colour'" in problems and "known keys: api_key, count" in problems
    assert "api_key: expected str | null, got <redacted>" in problems
    assert "123" not in str(info.value)


def test_moshi_settings_defaults_to_embedded_and_validates_url() -> None:
    assert MoshiSettings().resolved_transport == "embedded"
    s = parse_settings(MoshiSettings, {"url": "ws://127.0.0.1:8998/api/chat"}, section="moshi")
    assert s.resolved_transport == "remote"
    with pytest.raises(SettingsError, match="must start with ws://"):
        parse_settings(MoshiSettings, {"url": "http://x"}, section="moshi")
    with pytest.raises(SettingsError, match="needs url"):
        parse_settings(MoshiSettings, {"transport": "remote"}, section="moshi")


def test_secrets_never_in_repr_or_redacted_view() -> None:
    s = MoshiSettings(auth_token="sekrit")
    assert "sekrit" not in repr(s)
    assert redacted(s)["auth_token"] == "<redacted>"


def test_describe_settings_documents_every_moshi_key() -> None:
    rows = describe_settings(MoshiSettings)
    assert {r[0] for r in rows} >= {"url", "checkpoint", "slots", "connect_timeout_s"}
    assert all(r[3] for r in rows), "every moshi: key has help text"
