"""Persona requests as front doors see them (pure, no torch): NVIDIA's query parameters
parsed and produced, checked against what a model supports, and the adapter settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voice_server_moshi.engine.persona import (
    PersonaError,
    PersonaPrompt,
    PersonaSupport,
    check_persona,
    parse_persona_query,
    persona_query,
    wrap_system_tags,
)
from voice_server_moshi.errors import SettingsError
from voice_server_moshi.moshi.remote_connect import build_url
from voice_server_moshi.moshi.settings import MoshiSettings
from voice_server_moshi.settings import parse_settings

PLEX = PersonaSupport("personaplex", frozenset({"NATF2", "VARM4"}), "NATF2", "dev-personaplex")
MOSHI = PersonaSupport("moshi", checkpoint="dev")


def test_text_prompt_is_wrapped_once_as_nvidia_does() -> None:
    assert wrap_system_tags("  Be brief. ") == "<system> Be brief. <system>"
    assert wrap_system_tags("<system> Be brief. <system>") == "<system> Be brief. <system>"


def test_query_parameters_parse_like_nvidias_server() -> None:
    req = parse_persona_query({"text_prompt": "You sell phones.", "voice_prompt": "NATF2.pt",
                               "seed": "42", "other": "x"})
    assert req.prompt == PersonaPrompt("<system> You sell phones. <system>", "NATF2")
    assert req.seed == 42
    assert parse_persona_query({"text_prompt": "", "voice_prompt": ""}).prompt is None
    assert parse_persona_query({"seed": "-1"}).seed is None


def test_voice_prompt_is_a_basename_only() -> None:
    req = parse_persona_query({"voice_prompt": "../../etc/NATF2.pt"})
    assert req.prompt == PersonaPrompt(None, "NATF2")
    for bad in ("../", "..", "/"):
        with pytest.raises(PersonaError, match="names no voice"):
            parse_persona_query({"voice_prompt": bad})
    with pytest.raises(PersonaError, match="seed"):
        parse_persona_query({"seed": "abc"})


def test_check_fills_the_default_voice_and_refuses_with_a_reason() -> None:
    assert check_persona(None, MOSHI) is None
    assert check_persona(PersonaPrompt("<system> x <system>", None), PLEX) == PersonaPrompt(
        "<system> x <system>", "NATF2")
    with pytest.raises(PersonaError, match=r"unknown voice 'NOPE'.*NATF2, VARM4"):
        check_persona(PersonaPrompt(None, "NOPE"), PLEX)
    with pytest.raises(PersonaError, match="not trained for persona"):
        check_persona(PersonaPrompt("<system> x <system>", None), MOSHI)


def test_query_round_trips_through_the_parser() -> None:
    q = persona_query("You sell phones.", "NATF2", 7)
    assert q == {"text_prompt": "You sell phones.", "voice_prompt": "NATF2.pt", "seed": "7"}
    assert parse_persona_query(q).prompt == PersonaPrompt("<system> You sell phones. <system>",
                                                          "NATF2")
    assert persona_query(None, "/voices/mine.wav")["voice_prompt"] == "mine.wav"


def test_remote_url_carries_nvidias_parameters() -> None:
    url = build_url(MoshiSettings(url="ws://h:1/api/chat", persona="Be brief.",
                                  voice="VARM4", seed=3))
    assert url == "ws://h:1/api/chat?text_prompt=Be+brief.&voice_prompt=VARM4.pt&seed=3"
    assert "text_prompt" not in build_url(MoshiSettings(url="ws://h:1/api/chat"))


def test_settings_refuse_a_bad_voice_or_persona() -> None:
    with pytest.raises(SettingsError, match="names no voice"):
        parse_settings(MoshiSettings, {"voice": "../"}, section="moshi")
    with pytest.raises(SettingsError, match="at most"):
        parse_settings(MoshiSettings, {"persona": "x" * 5000}, section="moshi")
    ok = parse_settings(MoshiSettings, {"persona": "Be brief.", "voice": "NATF2"}, section="moshi")
    assert ok.voice == "NATF2"


def test_warm_persona_flags(tmp_path: Path) -> None:
    """``--warm-persona`` (default voice) and ``--warm-personas FILE`` (persona + voice),
    checked before any model loads."""
    import argparse

    from voice_server_moshi.engine.persona_flags import add_persona_flags, warm_personas_from_args
    from voice_server_moshi.engine.spec import EngineSpec

    p = argparse.ArgumentParser()
    add_persona_flags(p)
    f = tmp_path / "warm.json"
    f.write_text(json.dumps([{"persona": "Be brief.", "voice": "NATM1.pt"}, {"voice": "VARF0"}]))
    args = p.parse_args(["--warm-persona", "Hello.", "--warm-personas", str(f),
                         "--voices", "/v", "--prompt-cache-bytes", "1000"])
    assert warm_personas_from_args(args) == (("Hello.", None), ("Be brief.", "NATM1.pt"),
                                             (None, "VARF0"))
    f.write_text(json.dumps([{"persona": 3}]))
    with pytest.raises(ValueError, match="entry 0 must be"):
        warm_personas_from_args(args)
    f.write_text(json.dumps([{"voice": "../x/"}]))
    with pytest.raises(ValueError, match="names no voice"):
        warm_personas_from_args(args)
    with pytest.raises(ValueError, match=r"warm\.json\.missing: "):
        warm_personas_from_args(p.parse_args(["--warm-personas", str(tmp_path / "warm.json")
                                              + ".missing"]))
    spec = EngineSpec(voices="/v", prompt_cache_bytes=1000)
    assert spec.engine_config().prompt_cache_bytes == 1000
