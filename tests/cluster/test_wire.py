"""The ingress <-> engine replica data plane codec (no Ray, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from voice_server_moshi.cluster import wire


def test_frames_and_outputs_round_trip_exactly() -> None:
    pcm = np.linspace(-1, 1, wire.FRAME_SAMPLES, dtype=np.float32)
    assert np.array_equal(wire.decode_frame(wire.encode_frame(pcm)), pcm)
    out = wire.decode_reply(wire.encode_output(41, 1234, " héllo", pcm))
    assert isinstance(out, wire.Output)
    assert (out.step, out.text_token, out.text) == (41, 1234, " héllo")
    assert np.array_equal(out.pcm, pcm)
    silent = wire.decode_reply(wire.encode_output(0, 3, None, pcm))
    assert isinstance(silent, wire.Output) and silent.text is None
    err = wire.decode_reply(wire.encode_error("engine tick failed"))
    assert isinstance(err, wire.EngineFailure) and err.message == "engine tick failed"


@pytest.mark.parametrize("data", [b"", b"\x01" + bytes(10), b"\x02" + bytes(7680)])
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_frame(data)


@pytest.mark.parametrize("data", [b"", b"\x11\x00", b"\x42abc",
                                  wire.encode_output(1, 2, "x", np.zeros(1920, np.float32))[:-4]])
def test_bad_replies_are_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_reply(data)


def test_a_frame_of_the_wrong_size_is_not_encoded() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_frame(np.zeros(100, np.float32))


def test_serve_and_the_shared_cluster_parts_never_import_ray() -> None:
    """Single-process ``serve`` (with or without ingress workers) runs without Ray."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import voice_server_moshi.server.cli, voice_server_moshi.server.workers\n"
            "import voice_server_moshi.cluster.relay, voice_server_moshi.cluster.engine_side\n"
            "import voice_server_moshi.cluster.wire, voice_server_moshi.cluster.metrics\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
