"""Ogg/Opus over sphn: round trip, length accounting, codec delay, wire compatibility."""

from __future__ import annotations

import numpy as np
import pytest
import sphn

from voice_server_moshi.audio.measure import added_latency_ms
from voice_server_moshi.audio.opus import OpusDecoder, OpusEncoder


def _signal(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(24000 * seconds)) / 24000
    # a speech-band chirp with a slow envelope: something a voice codec keeps
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 400 * t * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    return x.astype(np.float32)


class _Loop:
    def __init__(self, frame: int) -> None:
        self.enc, self.dec = OpusEncoder(24000, frame), OpusDecoder(24000)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self.dec.decode(self.enc.encode(x))

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32)


def test_round_trip_lengths_and_correlation() -> None:
    x = _signal()
    enc, dec = OpusEncoder(), OpusDecoder()
    pages, outs = [], []
    for i in range(0, len(x), 480):  # 20 ms chunks in, 80 ms frames encoded
        page = enc.encode(x[i : i + 480])
        assert (page == b"") == ((i // 480) % 4 != 3)  # bytes only when a frame completes
        pages.append(page)
        outs.append(dec.decode(page))
    assert pages[3].startswith(b"OggS")
    y = np.concatenate(outs)
    assert y.dtype == np.float32 and len(y) == (len(x) // 1920) * 1920
    # Measured codec delay (the same code as `bench audio`), then the waveform after it.
    lat = added_latency_ms(lambda: _Loop(1920), 24000, 24000)
    d = round(lat["delay_ms"] * 24)
    assert 0 <= d <= 24 * 10  # Opus look-ahead is a few ms, never tens
    a, b = x[2400 : len(y) - d - 2400], y[2400 + d : len(y) - 2400]
    corr = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
    assert corr > 0.95


def test_decoder_takes_the_stream_split_anywhere() -> None:
    x = _signal(1.0)
    enc = OpusEncoder()
    stream = enc.encode(x)
    whole = OpusDecoder().decode(stream)
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.integers(0, len(stream), 25))
    dec = OpusDecoder()
    parts = [dec.decode(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_wire_compatible_with_raw_sphn_as_moshi_server_uses_it() -> None:
    # moshi.server feeds each received payload to sphn.OpusStreamReader.append_bytes and
    # sends sphn.OpusStreamWriter.append_pcm output; both ends must interoperate with ours.
    x = _signal(1.0)
    ours = OpusEncoder().encode(x)
    raw_reader = sphn.OpusStreamReader(24000)
    assert np.array_equal(raw_reader.append_bytes(ours), OpusDecoder().decode(ours))
    writer = sphn.OpusStreamWriter(24000)
    theirs = b"".join(bytes(writer.append_pcm(x[i : i + 1920])) for i in range(0, 24000, 1920))
    y = OpusDecoder().decode(theirs)
    assert len(y) == 24000 and np.abs(y).max() > 0.1  # 12 frames of 80 ms + one of 40 ms


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="float32"):
        OpusEncoder().encode(np.zeros(1920, np.float64))
    with pytest.raises(ValueError, match="1-D"):
        OpusEncoder().encode(np.zeros((1, 1920), np.float32))
    with pytest.raises(ValueError, match="frame size"):
        OpusEncoder(24000, 1000)
    with pytest.raises(ValueError, match="sample rate"):
        OpusDecoder(22050)
    with pytest.raises(TypeError, match="bytes"):
        OpusDecoder().decode("OggS")  # type: ignore[arg-type]
    assert OpusDecoder().decode(b"").shape == (0,)
