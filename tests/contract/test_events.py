import dataclasses

import pytest

from voice_server_moshi import events
from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.formats import AudioFormat

EXPECTED = {
    events.Connected: "connected",
    events.AudioChunk: "audio-chunk",
    events.SpeechStarted: "speech-started",
    events.SpeechEnded: "speech-ended",
    events.Error: "error",
    events.Disconnected: "disconnected",
    events.Interruption: "interruption",
    events.Transcript: "transcript",
    events.Steering: "steering",
}


def test_every_event_has_its_host_name() -> None:
    assert {t: t.name for t in events.EVENT_TYPES} == EXPECTED
    assert frozenset(EXPECTED.values()) == events.EVENT_NAMES


def test_instances_expose_name_and_are_frozen() -> None:
    e = events.SpeechStarted(t_ms=120.0, source="local-vad")
    assert e.name == "speech-started"
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.t_ms = 1.0  # type: ignore[misc]
    assert "name" not in {f.name for f in dataclasses.fields(e)}


def test_audio_chunk_duration_follows_format() -> None:
    fmt = AudioFormat(encoding="mulaw")
    chunk = events.AudioChunk(audio=b"\xff" * 160, format=fmt)
    assert chunk.duration_ms == pytest.approx(20.0)
    assert "audio" not in repr(chunk).split("format")[0] or "\\xff" not in repr(chunk)


def test_connected_carries_capabilities() -> None:
    caps = Capabilities(full_duplex=True, agent_transcript=True)
    c = events.Connected(session_id="s1", capabilities=caps)
    assert c.capabilities.full_duplex and not c.capabilities.server_vad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoding": "opus"}, "unknown audio encoding"),
        ({"encoding": "mulaw", "sample_rate": 16000}, "8000 Hz only"),
        ({"sample_rate": 11025}, "unsupported sample rate"),
        ({"frame_ms": 25}, "unsupported frame_ms"),
    ],
)
def test_audio_format_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioFormat(**kwargs)  # type: ignore[arg-type]


def test_audio_format_sizes() -> None:
    assert AudioFormat().bytes_per_frame == 320
    assert AudioFormat(encoding="alaw").bytes_per_frame == 160
    assert AudioFormat(sample_rate=16000, frame_ms=10).samples_per_frame == 160


def test_steering_is_importable_from_the_package_root() -> None:
    import voice_server_moshi as root
    from voice_server_moshi import adapter, errors, modes

    assert root.Steering is events.Steering
    assert root.SteeringUnsupportedError is errors.SteeringUnsupportedError
    assert root.SteeringRequestError is errors.SteeringRequestError
    assert root.SteerableAdapter is adapter.SteerableAdapter
    assert root.SteeringCallbacks is modes.callbacks.SteeringCallbacks
    assert {name for name in root.__all__ if not hasattr(root, name)} == set()
