"""Framers: nothing lost or repeated over any chunking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_server_moshi.audio.framing import ByteFramer, SampleFramer


@given(
    frame=st.integers(1, 2000),
    chunks=st.lists(st.integers(0, 2500), max_size=30),
    dtype=st.sampled_from([np.float32, np.int16]),
)
def test_sample_framer_accounting(frame: int, chunks: list[int], dtype: type) -> None:
    f = SampleFramer(frame, dtype)
    total = sum(chunks)
    stream = np.arange(total).astype(dtype) if dtype is np.float32 else (
        np.arange(total) % 30000).astype(np.int16)
    out: list[np.ndarray] = []
    i = 0
    for n in chunks:
        out += f.push(stream[i : i + n])
        i += n
        assert len(out) == i // frame and f.pending == i % frame
    assert all(o.shape == (frame,) and o.dtype == dtype for o in out)
    rest = f.flush(pad=False)
    got = np.concatenate([*out, rest] if rest is not None else [*out, stream[:0]])
    assert np.array_equal(got, stream)
    assert f.pending == 0 and f.flush() is None


def test_sample_framer_flush_pads_with_zeros() -> None:
    f = SampleFramer(4, np.int16)
    assert f.push(np.array([1, 2, 3, 4, 5, 6], np.int16))[0].tolist() == [1, 2, 3, 4]
    padded = f.flush(pad=True)
    assert padded is not None and padded.tolist() == [5, 6, 0, 0]
    assert f.pending == 0 and f.flush() is None


def test_20ms_to_80ms_and_back() -> None:
    up = SampleFramer(1920)
    frames_in = [np.full(480, k, np.float32) for k in range(8)]  # 20 ms at 24 kHz
    moshi = [fr for x in frames_in for fr in up.push(x)]
    assert [m[0] for m in moshi] == [0.0, 4.0] and all(len(m) == 1920 for m in moshi)
    down = SampleFramer(480)
    back = [fr for m in moshi for fr in down.push(m)]
    assert all(np.array_equal(a, b) for a, b in zip(back, frames_in, strict=True))


def test_frames_do_not_alias_input_or_buffer() -> None:
    f = SampleFramer(3)
    x = np.arange(7, dtype=np.float32)
    frames = f.push(x)
    x[:] = -1
    assert frames[0].tolist() == [0, 1, 2] and frames[1].tolist() == [3, 4, 5]
    f.push(np.array([7, 8], np.float32))[0][:] = 99
    rest = f.flush(pad=False)
    assert rest is None  # 6, 7, 8 made a frame; nothing is pending


@given(frame=st.integers(1, 500), chunks=st.lists(st.binary(max_size=700), max_size=20))
def test_byte_framer_accounting(frame: int, chunks: list[bytes]) -> None:
    f = ByteFramer(frame)
    out: list[bytes] = []
    seen = b""
    for c in chunks:
        out += f.push(c)
        seen += c
        assert len(out) == len(seen) // frame and f.pending == len(seen) % frame
    assert all(len(o) == frame for o in out)
    rest = f.flush(pad=False) or b""
    assert b"".join(out) + rest == seen


def test_byte_framer_flush_fill() -> None:
    f = ByteFramer(4)
    f.push(b"\x01")
    assert f.flush(pad=True, fill=0xFF) == b"\x01\xff\xff\xff"
    assert f.flush() is None


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        SampleFramer(0)
    with pytest.raises(ValueError, match="positive"):
        ByteFramer(-1)
    f = SampleFramer(10, np.float32)
    with pytest.raises(TypeError, match="dtype"):
        f.push(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="1-D"):
        f.push(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="numpy"):
        f.push([1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        ByteFramer(2).push("ab")  # type: ignore[arg-type]
