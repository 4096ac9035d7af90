"""A standing fuzz of the data plane's decoders (issue 25 item 4): whatever bytes arrive on
a front door <-> engine connection (``callpath.wire``), the decoder gives a well-formed
item or its own :class:`WireError`, never another exception, and what it encodes it
decodes back.

:func:`decode_data_plane` is the one adapter to the decoder under test; point it at the
new data plane's decoder when the call path changes, the properties stay."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_server_moshi.callpath import wire
from voice_server_moshi.callpath.kinds import CancelSay, SayText, SteerAnswer
from voice_server_moshi.engine.slot import SlotError, SlotOutput

#: The decoder's own refusal (what the receiving loops catch).
DecodeError = wire.WireError


def decode_data_plane(raw: bytes, *, from_engine: bool) -> object:
    """One data-plane message as the receiving side decodes it."""
    return wire.decode_event(raw) if from_engine else wire.decode_request(raw)


def _near(kind: int, size: int) -> st.SearchStrategy[bytes]:
    """Messages of ``kind`` around the right ``size``: the decoder's edges."""
    return st.builds(lambda n, fill: bytes((kind,)) + (fill * (n // len(fill) + 1))[:n],
                     st.integers(max(0, size - 3), size + 3), st.binary(min_size=1, max_size=8))


#: JSON-carrying kinds (a newer data plane's requests and events) meet JSON that breaks
#: naive parsing: nesting past the recursion limit, 5 000-digit integers, 1e400 (inf),
#: non-objects, wrong field types, and no JSON at all.
JSON_BODIES = st.sampled_from([
    b"[" * 5000, b"1" * 5000, b'{"step": 1e400, "token": 1, "id": 1e400}', b"[1]", b'"x"',
    b"{}", b'{"id": 1, "text": 2, "flush": "no", "status": 3}', b"\xff\xfe", b"null",
    b'{"v": 1, "call_id": "a", "params": [1], "grant": "x"}', b'{"step": "1", "token": []}'])
JSON_MESSAGES = st.builds(lambda k, body: bytes((k,)) + body, st.integers(0, 0x20), JSON_BODIES)

def _outputs() -> st.SearchStrategy[bytes]:
    """A real 0x11 header with text and steering-mark fields of any bytes, then PCM."""
    return st.builds(
        lambda step, tok, text, marks, pcm_len: (
            bytes((wire.OUTPUT,)) + step.to_bytes(4, "little")
            + tok.to_bytes(4, "little", signed=True) + len(text).to_bytes(2, "little")
            + len(marks).to_bytes(2, "little") + text + marks + bytes(pcm_len)),
        st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1), st.binary(max_size=40),
        st.one_of(st.just(b""), JSON_BODIES, st.just(b'[["say-1", "started"]]')),
        st.sampled_from([wire.FRAME_SAMPLES * 4, 0, 7, 7680 + 4]))


ANY_BYTES = st.one_of(JSON_MESSAGES, st.binary(max_size=64),
                      _near(wire.FRAME, wire.FRAME_SAMPLES * 4),
                      _near(wire.OUTPUT, 13 + wire.FRAME_SAMPLES * 4),
                      _near(wire.ERROR, 10), _outputs())


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
    out = decode_data_plane(wire.encode_event(SlotOutput(step=step, pcm=pcm, text_token=token,
                                                         text=text or None)), from_engine=True)
    assert isinstance(out, SlotOutput)
    assert (out.step, out.text_token, out.text) == (step, token, text or None)
    assert np.array_equal(out.pcm, pcm)
    for req in (SayText("say-1", text or "x"), CancelSay(flush=bool(step % 2))):
        assert decode_data_plane(wire.encode_request(req), from_engine=False) == req
    for ev in (SlotError(text or "x"), SteerAnswer("say-2", "failed", text or "")):
        assert decode_data_plane(wire.encode_event(ev), from_engine=True) == ev


# Found by the fuzz: each escaped as RecursionError, ValueError, OverflowError or
# AttributeError, which the data plane's receiving loops do not catch.
FOUND = [
    (b"\x02" + b"[" * 100_000, False),                           # nesting past the limit
    (b"\x02" + b"1" * 5000, False),                               # a 5 000-digit integer
    (b"\x12" + b'{"step": 1e400, "token": 1}', True),             # inf where an int goes
    (b"\x12" + b"[" * 100_000, True),
    (bytes((wire.OUTPUT,)) + bytes(8) + (1).to_bytes(2, "little") + (0).to_bytes(2, "little")
     + b"\x80" + bytes(wire.FRAME_SAMPLES * 4), True),            # text not UTF-8
]


def test_what_the_fuzz_found_is_refused_with_a_wire_error() -> None:
    for raw, from_engine in FOUND:
        try:
            decode_data_plane(raw, from_engine=from_engine)
        except DecodeError:
            continue
        raise AssertionError(f"decoded {raw[:20]!r}")
    for hello in ('{"v": 1, "call_id": "a", "params": [1]}', "[" * 100_000):
        try:
            wire.decode_hello(hello)
        except DecodeError:
            continue
        raise AssertionError(f"decoded hello {hello[:20]!r}")
