"""Reference host: config formats, registry wiring, real-time and virtual pacing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voice_server_moshi.corpus.assemble import build_call
from voice_server_moshi.corpus.evaluate import score_call
from voice_server_moshi.corpus.run import run_corpus_call
from voice_server_moshi.corpus.store import bundled_clips
from voice_server_moshi.errors import SettingsError, UnknownNameError
from voice_server_moshi.host.config import HostConfig, load_config
from voice_server_moshi.host.reference import ReferenceHost

TOML = """
adapter = "moshi"
mode = "full-duplex"

[audio]
encoding = "alaw"
frame_ms = 20

[moshi]
url = "ws://127.0.0.1:8998/api/chat"

[full-duplex]
max_backchannel_ms = 900
barge_in_policy = "duck"
"""


def test_toml_json_and_dict_configs_agree(tmp_path: Path) -> None:
    toml = tmp_path / "host.toml"
    toml.write_text(TOML)
    a = load_config(toml)
    j = tmp_path / "host.json"
    j.write_text(json.dumps({
        "adapter": "moshi", "mode": "full-duplex", "audio": {"encoding": "alaw"},
        "moshi": {"url": "ws://127.0.0.1:8998/api/chat"},
        "full-duplex": {"max_backchannel_ms": 900, "barge_in_policy": "duck"},
    }))
    b = load_config(j)
    assert a == b
    assert a.audio.encoding == "alaw" and a.mode_settings["max_backchannel_ms"] == 900
    assert load_config(None) == HostConfig()


def test_config_errors_name_every_problem(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as exc:
        load_config({"adapter": 3, "moshy": {}, "audio": {"sample_rate": 8000, "x": 1}})
    text = str(exc.value)
    assert "adapter" in text and "'moshy'" in text
    bad = tmp_path / "host.toml"
    bad.write_text("adapter = [")
    with pytest.raises(SettingsError, match=r"host\.toml"):
        load_config(bad)
    with pytest.raises(SettingsError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(SettingsError, match=r"\.toml or \.json"):
        (tmp_path / "host.yaml").write_text("a: 1")
        load_config(tmp_path / "host.yaml")


def test_unknown_names_come_from_the_registry() -> None:
    host = ReferenceHost(HostConfig(adapter="nope"))
    with pytest.raises(UnknownNameError, match="nope"):
        host.make_adapter()


async def test_realtime_pacing_detects_the_same_turns_as_virtual() -> None:
    call = build_call(bundled_clips(), 3, 20.0)
    n = 8000 * 12  # the first 12 s
    call.caller, call.agent = call.caller[:n], call.agent[:n]
    call.caller_segments = [s for s in call.caller_segments if s.end_ms < 11000]
    call.agent_segments = [s for s in call.agent_segments if s.end_ms < 11000]
    virtual = await run_corpus_call(call)
    fast = await run_corpus_call(call, clock="realtime", speed=4.0)
    # In the caller's media time: a busy loop's stalls move the realtime call's clock
    # (the jitter buffer holds, drops, wins delay back), not what the VAD heard.
    sv = score_call(call, virtual.records, virtual.to_caller_media)
    sf = score_call(call, fast.records, fast.to_caller_media)
    assert sv.onsets_missed == 0 and sf.onsets_missed == 0
    assert len(sv.onset_errors_ms) == len(sf.onset_errors_ms) >= 2
    for a, b in zip(sv.onset_errors_ms, sf.onset_errors_ms, strict=True):
        assert abs(a - b) <= 40  # the same VAD on the same audio; pacing aside
    assert fast.wall_s < 12.0 / 4.0 + 3.0
    for res in (virtual, fast):
        names = [r.name for r in res.records if r.kind == "callback"]
        assert names.count("disconnected") == 1 and names[-1] == "disconnected"
        # A turn-based host's requests after each turn were no-ops.
        assert res.mode_stats["ignored_requests"] == 2 * names.count("user-turn-ended")
