"""A standing fuzz of the data plane's decoders (issue 25 item 4): whatever bytes arrive on
the ingress <-> engine connection, the decoder gives a well-formed item or its own
:class:`WireError`, never another exception, and what it encodes it decodes back.

:func:`decode_data_plane` is the one adapter to the decoder under test; point it at the
new data plane's decoder when the call path changes, the properties stay."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.cluster import wire

#: The decoder's own refusal (what the receiving loops catch).
DecodeError = wire.WireError


def decode_data_plane(raw: bytes, *, from_engine: bool) -> object:
    """One data-plane message as the receiving side decodes it."""
    return wire.decode_reply(raw) if from_engine else wire.decode_frame(raw)


def _near(kind: int, size: int) -> st.SearchStrategy[bytes]:
    """Messages of ``kind`` around the right ``size``: the decoder's edges."""
    return st.builds(lambda n, fill: bytes((kind,)) + (fill * (n // len(fill) + 1))[:n],
                     st.integers(max(0, size - 3), size + 3), st.binary(min_size=1, max_size=8))


def _outputs() -> st.SearchStrategy[bytes]:
    """A real 0x11 header with a text field of any bytes (UTF-8 or not), then PCM."""
    return st.builds(
        lambda step, tok, text, pcm_len: (
            bytes((wire.KIND_OUTPUT,)) + step.to_bytes(4, "little")
            + tok.to_bytes(4, "little", signed=True) + len(text).to_bytes(2, "little") + text
            + bytes(pcm_len)),
        st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1),
        st.binary(max_size=40), st.sampled_from([wire.FRAME_SAMPLES * 4, 0, 7, 7680 + 4]))


#: JSON-carrying kinds (a newer data plane's requests and events) meet JSON that breaks
#: naive parsing: nesting past the recursion limit, 5 000-digit integers, 1e400 (inf),
#: non-objects, wrong field types, and no JSON at all.
JSON_BODIES = st.sampled_from([
    b"[" * 5000, b"1" * 5000, b'{"step": 1e400, "token": 1, "id": 1e400}', b"[1]", b'"x"',
    b"{}", b'{"id": 1, "text": 2, "flush": "no", "status": 3}', b"\xff\xfe", b"null",
    b'{"v": 1, "call_id": "a", "params": [1], "grant": "x"}', b'{"step": "1", "token": []}'])
JSON_MESSAGES = st.builds(lambda k, body: bytes((k,)) + body, st.integers(0, 0x20), JSON_BODIES)

ANY_BYTES = st.one_of(JSON_MESSAGES, st.binary(max_size=64),
                      _near(wire.KIND_FRAME, wire.FRAME_SAMPLES * 4),
                      _near(wire.KIND_OUTPUT, 11 + wire.FRAME_SAMPLES * 4),
                      _near(wire.KIND_ERROR, 10), _outputs())


@settings(max_examples=1500, deadline=None)
@given(ANY_BYTES, st.booleans())
def test_the_data_plane_decoder_refuses_only_with_its_own_error(raw: bytes,
                                                               from_engine: bool) -> None:
    try:
        item = decode_data_plane(raw, from_engine=from_engine)
    except DecodeError:
        return
    # Whatever the decoder's item types, audio is one frame of float32 and text is str.
    pcm = item if isinstance(item, np.ndarray) else getattr(item, "pcm", None)
    if pcm is not None:
        assert pcm.shape == (wire.FRAME_SAMPLES,) and pcm.dtype == np.float32
    for name in ("text", "message"):
        value = getattr(item, name, None)
        assert value is None or isinstance(value, str), (name, value)


FRAMES = st.integers(0, 2**32 - 1).map(
    lambda seed: np.random.default_rng(seed).uniform(-1, 1, wire.FRAME_SAMPLES)
    .astype(np.float32))


@settings(max_examples=200, deadline=None)
@given(FRAMES, st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1),
       st.none() | st.text(max_size=60))
def test_what_the_data_plane_encodes_it_decodes_back(pcm: np.ndarray, step: int, token: int,
                                                     text: str | None) -> None:
    assert np.array_equal(decode_data_plane(wire.encode_frame(pcm), from_engine=False), pcm)
    out = decode_data_plane(wire.encode_output(step, token, text, pcm), from_engine=True)
    assert isinstance(out, wire.Output)
    assert (out.step, out.text_token, out.text) == (step, token, text or None)
    assert np.array_equal(out.pcm, pcm)
    failure = decode_data_plane(wire.encode_error(text or "x"), from_engine=True)
    assert isinstance(failure, wire.EngineFailure) and failure.message == (text or "x")


def test_a_reply_whose_text_is_not_utf8_is_a_wire_error() -> None:
    # Found by the fuzz above: it raised UnicodeDecodeError, which the ingress's downlink
    # does not expect from the decoder.
    head = bytes((wire.KIND_OUTPUT,)) + bytes(8) + (1).to_bytes(2, "little") + b"\x80"
    try:
        decode_data_plane(head + bytes(wire.FRAME_SAMPLES * 4), from_engine=True)
    except DecodeError as exc:
        assert "not UTF-8" in str(exc)
    else:
        raise AssertionError("decoded a reply whose text is not UTF-8")
