"""G.711 against CPython's audioop (the Sun reference code), exhaustively and by property."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from voice_server_moshi.audio import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
pcm_arrays = hnp.arrays(np.int16, st.integers(0, 400))


def test_ulaw_encode_all_65536_samples_bit_exact() -> None:
    assert g711.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)
    assert g711.encode(ALL_PCM, "mulaw") == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)


def test_alaw_encode_all_65536_samples_bit_exact() -> None:
    assert g711.alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM.tobytes(), 2)
    assert g711.encode(ALL_PCM, "alaw") == audioop.lin2alaw(ALL_PCM.tobytes(), 2)


def test_all_256_codes_decode_bit_exact() -> None:
    assert g711.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)
    assert g711.decode(ALL_CODES, "mulaw").dtype == np.int16


@given(pcm_arrays, st.sampled_from(["mulaw", "alaw"]))
def test_round_trip_matches_audioop(pcm: np.ndarray, enc: str) -> None:
    lin2, back = (audioop.lin2ulaw, audioop.ulaw2lin) if enc == "mulaw" else (
        audioop.lin2alaw, audioop.alaw2lin)
    codes = g711.encode(pcm, enc)
    assert codes == lin2(pcm.tobytes(), 2)
    assert g711.decode(codes, enc).tobytes() == back(codes, 2)


@given(st.binary(max_size=300))
def test_codes_survive_decode_encode(codes: bytes) -> None:
    # A-law is a bijection on its 256 codes; µ-law has two zeros (0x7F, 0xFF) -> 0xFF.
    assert g711.encode(g711.decode(codes, "alaw"), "alaw") == codes
    assert g711.encode(g711.decode(codes, "mulaw"), "mulaw") == codes.replace(b"\x7f", b"\xff")


@given(pcm_arrays)
def test_pcm16_is_little_endian_and_lossless(pcm: np.ndarray) -> None:
    data = g711.encode(pcm, "pcm16")
    assert data == pcm.astype("<i2").tobytes()
    out = g711.decode(data, "pcm16")
    assert out.dtype == np.int16 and np.array_equal(out, pcm)


def test_pcm16_byte_order() -> None:
    assert g711.decode(b"\x01\x00\x00\x80", "pcm16").tolist() == [1, -32768]
    out = g711.decode(b"\x01\x00", "pcm16")
    out[0] = 5  # decode returns a writable array that the caller owns
    assert out[0] == 5


@pytest.mark.parametrize("enc", ["mulaw", "alaw", "pcm16"])
def test_empty_input(enc: str) -> None:
    assert g711.encode(np.zeros(0, np.int16), enc) == b""
    assert g711.decode(b"", enc).shape == (0,)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.decode(b"\x00\x01\x02", "pcm16")
    with pytest.raises(TypeError, match="int16"):
        g711.encode(np.zeros(4, np.float32), "mulaw")
    with pytest.raises(TypeError, match="int16"):
        g711.encode(np.zeros(4, np.int32), "pcm16")
    with pytest.raises(ValueError, match="1-D"):
        g711.encode(np.zeros((2, 4), np.int16), "alaw")
    with pytest.raises(TypeError, match="numpy"):
        g711.encode([1, 2, 3], "mulaw")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        g711.decode("abc", "mulaw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown encoding"):
        g711.decode(b"\x00", "opus")
    with pytest.raises(ValueError, match="unknown encoding"):
        g711.encode(np.zeros(1, np.int16), "ulaw")
