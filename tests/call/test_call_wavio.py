"""WAV reading (PCM widths, float, G.711) and the errors for what cannot be read."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from voice_server_moshi.audio import g711
from voice_server_moshi.audio.wavio import WavError, read_wav, write_wav_g711, write_wav_pcm16
from voice_server_moshi.call.caller import load_caller
from voice_server_moshi.formats import AudioFormat

TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4410) / 44100)).astype(np.float32)


def _pcm_wav(path: Path, data: bytes, width: int, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths(tmp_path: Path, width: int) -> None:
    x = TONE.astype(np.float64)
    if width == 1:
        data = (np.round(x * 127) + 128).astype(np.uint8).tobytes()
    elif width == 2:
        data = np.round(x * 32767).astype("<i2").tobytes()
    elif width == 3:
        v = np.round(x * (2**23 - 1)).astype(np.int32)
        data = b"".join(struct.pack("<i", int(s))[:3] for s in v)
    else:
        data = np.round(x * (2**31 - 1)).astype("<i4").tobytes()
    _pcm_wav(tmp_path / "a.wav", data, width, 44100, 1)
    wav = read_wav(tmp_path / "a.wav")
    assert wav.sample_rate == 44100 and wav.encoding == f"pcm{width * 8}"
    assert np.max(np.abs(wav.mono() - TONE)) < (0.01 if width == 1 else 1e-4)


def test_float_and_g711_and_stereo(tmp_path: Path) -> None:
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    body = TONE.astype("<f4").tobytes()
    chunk = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(body))
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(chunk) + len(body))
                                     + chunk + body)
    f = read_wav(tmp_path / "f.wav")
    assert f.encoding == "float32" and np.allclose(f.mono(), TONE)
    for enc in ("mulaw", "alaw"):
        pcm = np.round(TONE[:800] * 20000).astype(np.int16)
        write_wav_g711(tmp_path / f"{enc}.wav", g711.encode(pcm, enc), enc)
        w = read_wav(tmp_path / f"{enc}.wav")
        assert w.encoding == enc and w.sample_rate == 8000
        assert np.array_equal(np.round(w.mono() * 32768).astype(np.int16),
                              g711.decode(g711.encode(pcm, enc), enc))
    st = np.stack([TONE, -TONE], axis=1)
    write_wav_pcm16(tmp_path / "s.wav", st, 48000)
    s = read_wav(tmp_path / "s.wav")
    assert s.channels == 2 and np.abs(s.mono()).max() < 1e-3


def test_caller_is_resampled_to_the_call_rate(tmp_path: Path) -> None:
    for rate in (16000, 44100):
        n = rate // 2
        x = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(n) / rate)).astype(np.float32)
        write_wav_pcm16(tmp_path / "c.wav", x, rate)
        data, wav = load_caller(tmp_path / "c.wav", AudioFormat("mulaw", 8000, 20))
        assert wav.sample_rate == rate
        assert abs(len(data) - 4000) <= 2  # 0.5 s at 8 kHz, one byte a sample
        y = g711.decode(data, "mulaw").astype(np.float64) / 32768
        spec = np.abs(np.fft.rfft(y[400:3600]))
        assert abs(np.argmax(spec) * 8000 / 3200 - 1000) < 10


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a WAV"),
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "no valid 'fmt '"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 85, 1, 8000,
                                                                    1000, 1, 0)
     + b"data\x02\x00\x00\x00\x00\x00", "format tag 85"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 7, 1, 8000,
                                                                    8000, 1, 8), "no 'data'"),
])
def test_unreadable_wavs_get_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(WavError, match=message):
        read_wav(p)
    with pytest.raises(WavError, match="cannot read"):
        read_wav(tmp_path / "missing.wav")
