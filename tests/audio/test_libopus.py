"""The libopus encoder (ctypes): sphn's stream shape, Kyutai's reader takes it, an
operator's library setting is obeyed or refused, and the Ogg checksum is Ogg's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sphn
from numpy.typing import NDArray

from voice_server_moshi.audio import libopus
from voice_server_moshi.audio.libopus import LIBOPUS_ENV, LibopusEncoder, LibopusError
from voice_server_moshi.audio.ogg_meter import opus_packet_samples
from voice_server_moshi.audio.ogg_pages import ogg_crc, parse_pages
from voice_server_moshi.audio.opus import OpusDecoder, OpusEncoder, default_backend, encoder_name

needs_libopus = pytest.mark.skipif(libopus.load_libopus() is None,
                                   reason="no libopus on this machine (apt-get install libopus0)")


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    """The library lookup is cached per process: forget it around a test that sets the env."""
    libopus.load_libopus.cache_clear()
    yield
    libopus.load_libopus.cache_clear()


def _speechlike(seconds: float) -> NDArray[np.float32]:
    t = np.arange(int(24000 * seconds)) / 24000
    x = 0.3 * np.sin(2 * np.pi * (180 * t + 300 * t * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.01 * np.random.default_rng(1).standard_normal(len(t))).astype(np.float32)


def test_ogg_crc_is_the_checksum_a_real_encoder_writes() -> None:
    writer = sphn.OpusStreamWriter(24000)
    x = _speechlike(0.96)
    stream = b"".join(bytes(writer.append_pcm(x[i:i + 1920])) for i in range(0, len(x), 1920))
    pos, pages = 0, 0
    while pos < len(stream):
        n = stream[pos + 26]
        end = pos + 27 + n + sum(stream[pos + 27:pos + 27 + n])
        raw = stream[pos:end]
        assert ogg_crc(raw[:22] + b"\0\0\0\0" + raw[26:]) == int.from_bytes(raw[22:26], "little")
        pos, pages = end, pages + 1
    assert pages == 2 + 2 * 12  # headers, then two 40 ms packets per 80 ms frame


@needs_libopus
def test_stream_shape_is_sphns() -> None:
    enc = LibopusEncoder(24000, 1920)
    x = _speechlike(0.48)
    stream = b"".join(enc.encode(x[i:i + 1920]) for i in range(0, len(x), 1920))
    pages = parse_pages(stream)
    (htype0, g0, serial0, seq0, [head]), (_, _, _, _, [tags]) = pages[:2]
    assert (htype0, g0, serial0, seq0) == (2, 0, 42, 0)  # beginning of stream, sphn's serial
    assert head[:8] == b"OpusHead" and head[8:10] == b"\x01\x01"  # version 1, mono
    assert int.from_bytes(head[12:16], "little") == 24000
    assert 0 < int.from_bytes(head[10:12], "little") <= 960  # pre-skip: the encoder's look-ahead
    assert tags.startswith(b"OpusTags") and b"libopus" in tags
    audio = pages[2:]
    assert len(audio) == 12  # six 80 ms frames, two 40 ms packets each
    for k, (htype, granule, serial, seq, packets) in enumerate(audio):
        assert (htype, serial, seq, len(packets)) == (0, 42, k + 2, 1)
        assert opus_packet_samples(packets[0]) == 1920  # 40 ms at 48 kHz
        assert granule == 1920 * (k + 1)


@needs_libopus
def test_kyutais_reader_decodes_it_like_sphns_own_stream() -> None:
    x = _speechlike(2.0)
    ours = OpusEncoder(backend="libopus")
    theirs = sphn.OpusStreamWriter(24000)
    reader_a, reader_b = sphn.OpusStreamReader(24000), sphn.OpusStreamReader(24000)
    a = np.concatenate([reader_a.append_bytes(ours.encode(x[i:i + 1920]))
                        for i in range(0, len(x), 1920)])
    b = np.concatenate([reader_b.append_bytes(bytes(theirs.append_pcm(x[i:i + 1920])))
                        for i in range(0, len(x), 1920)])
    assert len(a) == len(b) == len(x)
    # Same codec, same mode: the two decodes track each other after the first packets.
    core = slice(4800, len(x) - 2400)
    a, b = a[core], b[core]
    assert float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))) > 0.9


@needs_libopus
def test_frames_are_cut_into_packets_or_sent_whole() -> None:
    enc = LibopusEncoder(24000, 480)  # 20 ms frames: one packet each
    stream = enc.encode(_speechlike(0.02))
    assert [opus_packet_samples(p[4][0]) for p in parse_pages(stream)[2:]] == [960]
    with pytest.raises(ValueError, match="not whole 960-sample packets"):
        LibopusEncoder(24000, 1920).encode(np.zeros(1000, np.float32))


def test_off_means_sphn(monkeypatch: pytest.MonkeyPatch, fresh_lookup: None) -> None:
    monkeypatch.setenv(LIBOPUS_ENV, "off")
    assert default_backend() == "sphn" and encoder_name() == "sphn"
    assert OpusEncoder().backend == "sphn"
    with pytest.raises(LibopusError, match="libopus0"):
        OpusEncoder(backend="libopus")
    # sphn still makes a stream Kyutai's reader takes
    x = _speechlike(0.4)
    assert len(OpusDecoder().decode(OpusEncoder().encode(x))) == len(x)


def test_an_operators_library_path_that_does_not_load_is_an_error(
        monkeypatch: pytest.MonkeyPatch, fresh_lookup: None) -> None:
    monkeypatch.setenv(LIBOPUS_ENV, "/nonexistent/libopus.so.0")
    with pytest.raises(LibopusError, match=f"{LIBOPUS_ENV}='/nonexistent/libopus.so.0'"):
        default_backend()


@needs_libopus
def test_an_operators_library_path_is_used(monkeypatch: pytest.MonkeyPatch,
                                           fresh_lookup: None) -> None:
    import ctypes.util

    path = ctypes.util.find_library("opus") or "libopus.so.0"
    monkeypatch.setenv(LIBOPUS_ENV, path)
    assert default_backend() == "libopus"
    assert encoder_name().startswith("libopus ")


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Opus backend 'vorbis'"):
        OpusEncoder(backend="vorbis")  # type: ignore[arg-type]


def test_serve_stops_at_start_on_a_library_path_that_does_not_load(
        monkeypatch: pytest.MonkeyPatch, fresh_lookup: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from voice_server_moshi.server.cli import main

    monkeypatch.setenv(LIBOPUS_ENV, str(tmp_path / "libopus.so.0"))
    # A checkpoint that does not exist: reaching the loader would say so instead.
    assert main(["--checkpoint", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"error: {LIBOPUS_ENV}=" in err and "could not load checkpoint" not in err


def test_serve_warns_with_the_fix_when_it_falls_back_to_sphn(
        monkeypatch: pytest.MonkeyPatch, fresh_lookup: None, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from voice_server_moshi import _log
    from voice_server_moshi.server.cli import main

    warned: list[tuple[str, dict[str, object]]] = []

    class Recorder:  # what the suite's other tests configured logging to does not matter
        def warning(self, event: str, **kw: object) -> None:
            warned.append((event, kw))

        def __getattr__(self, level: str) -> object:  # info, debug...: not asked about
            return lambda *a, **kw: None

    monkeypatch.setattr(_log, "get_logger", lambda *a, **kw: Recorder())
    monkeypatch.setenv(LIBOPUS_ENV, "off")
    assert main(["--checkpoint", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    [(_, kw)] = [w for w in warned if "no libopus" in w[0]]
    assert "apt-get install libopus0" in str(kw["fix"])
