"""Messages for the protocol fuzz: valid, mutated and random client messages of ``serve``'s
``/api/chat`` (docs/protocol.md), each labelled with what the server session must make of
it, and the query strings a call opens with (the per-call sampling fields).

One :class:`MessageMaker` per connection, driven by a ``random.Random``: the live fuzz
(``bench fuzz``) seeds it, the property-based tests hand it hypothesis' ``st.randoms()``,
so both draw the same kinds of messages. ``expect`` is the session's verdict, not the
media's: an ``0x01`` message is well-formed whatever its bytes (the Ogg/Opus decoder is
the shell's), so mutated pages are ``"ok"`` for the session and ``media="bad"``.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlencode

import numpy as np

from ..audio.ogg_pages import fix_crc, page, parse_pages
from ..engine.call_sampling import RANGES, SAMPLING_KEYS

__all__ = ["FAMILIES", "Fuzzed", "MessageMaker", "opus_stream", "query"]

Expect = Literal["ok", "malformed", "any"]
Media = Literal["good", "bad", "none"]

#: Families and their weights: mostly what a real client sends, so a connection lives
#: long enough to reach later states (steering in flight, a stream well under way).
FAMILIES: Final[dict[str, int]] = {
    "audio": 30, "audio_mutated": 14, "say_text": 8, "say_audio": 5, "cancel": 4,
    "flush_caller": 2, "kyutai_kind": 12, "unknown_kind": 8, "random": 6, "empty": 2,
    "text_frame": 3, "oversized": 1, "deep_json": 1,
}
_SAY_AUDIO: Final = 0x41
_CANCEL: Final = 0x42
_FLUSH_CALLER: Final = 0x52
#: Kinds a ``serve`` session handles itself; any other byte is an unknown kind.
_HANDLED: Final = frozenset({*range(0x0A), _SAY_AUDIO, _CANCEL, _FLUSH_CALLER})


@dataclass(frozen=True, slots=True)
class Fuzzed:
    """One client message and what the server's session must make of it."""

    data: bytes | str = field(repr=False)
    family: str
    expect: Expect
    media: Media = "none"


def opus_stream(frames: int = 50, seed: int = 0) -> list[bytes]:
    """A valid 24 kHz mono Ogg/Opus stream (a tone over noise), one message per 80 ms
    frame as ``sphn`` writes them (the first carries the stream headers)."""
    import sphn

    rng = np.random.default_rng(seed)
    writer = sphn.OpusStreamWriter(24000)
    t = np.arange(1920) / 24000
    out = []
    for k in range(frames):
        pcm = 0.2 * np.sin(2 * np.pi * (200 + 7 * (k % 11)) * (t + 0.08 * k))
        pcm += 0.02 * rng.standard_normal(1920)
        out.append(bytes(writer.append_pcm(pcm.astype(np.float32))))
    return out


def _value(rng: random.Random, key: str, valid: bool) -> str:
    lo, hi = RANGES[key]
    integer = isinstance(lo, int) and isinstance(hi, int)
    if valid:
        return str(rng.randint(int(lo), int(hi))) if integer else f"{rng.uniform(lo, hi):.3f}"
    return rng.choice([
        "nan", "inf", "-inf", "1e999", "", " ", "abc", "0x10", "--1", "1.5.2",
        str(int(hi) + rng.randint(1, 10**6)), str(int(lo) - rng.randint(1, 10**6)),
        "9" * rng.choice([20, 400, 5000]), "true", "[1]", "1e-400x",
    ])


#: Values Python's ``int``/``float`` read although a strict parser would not (digit
#: groups, other scripts' digits, padding): in range they are accepted, harmlessly.
_LENIENT = ("1_0", "\u0661\u0662", " 7 ", "+3", "1e-400")


def query(rng: random.Random) -> tuple[str, bool | None]:
    """A request target (``/api/chat?...``) and whether its sampling fields are valid
    (None: a lenient spelling, see ``_LENIENT``)."""
    params: list[tuple[str, str]] = []
    valid: bool | None = True
    for key in rng.sample(SAMPLING_KEYS, rng.randint(0, 3)):
        good = rng.random() < 0.85
        if valid is not None:
            valid &= good
        if rng.random() < 0.03:
            valid = None
            params.append((key, rng.choice(_LENIENT)))
            continue
        params.append((key, _value(rng, key, good)))
    if rng.random() < 0.2:  # keys Kyutai's clients send and the server must ignore
        params.append((rng.choice(["email", "worker_auth_id", "x", "text_temperature_"]),
                       rng.choice(["", "a@b.c", "\x00", "%", "é" * 50])))
    rng.shuffle(params)
    return "/api/chat" + ("?" + urlencode(params) if params else ""), valid


class MessageMaker:
    """Client messages for one connection; valid audio follows one Ogg stream in order."""

    def __init__(self, rng: random.Random, stream: list[bytes], *,
                 max_message_bytes: int = 1 << 20, flush_caller: bool = False) -> None:
        self.rng = rng
        self.stream = stream
        self.max_message_bytes = max_message_bytes
        #: Whether the session takes 0x52 (an STT beside Moshi); otherwise an unknown kind.
        self.flush_caller = flush_caller
        self.cursor = 0
        self._families = list(FAMILIES)
        self._weights = list(FAMILIES.values())

    def next(self) -> Fuzzed:
        family = self.rng.choices(self._families, self._weights)[0]
        made: Fuzzed = getattr(self, "_" + family)()
        return made

    # -- audio -----------------------------------------------------------------------

    def _audio(self) -> Fuzzed:
        data = self.stream[self.cursor % len(self.stream)]
        if self.cursor and self.cursor % len(self.stream) == 0:
            data = self.stream[1]  # wrapped: headers again would start a new stream
        self.cursor += 1
        return Fuzzed(b"\x01" + data, "audio", "ok", "good")

    def _audio_mutated(self) -> Fuzzed:
        rng = self.rng
        pages = [p for m in self.stream[:8] for p in _split_pages(m)]
        raw = bytearray(rng.choice(pages))
        how = rng.randrange(10)
        if how == 0:  # a flipped byte under a stale checksum
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif how == 1:  # a flipped body byte under a valid checksum: reaches the decoder
            i = rng.randrange(27 + raw[26], len(raw)) if len(raw) > 27 + raw[26] else 5
            raw[i] ^= 1 << rng.randrange(8)
            raw = bytearray(fix_crc(bytes(raw)))
        elif how == 2:
            raw = raw[:rng.randrange(len(raw))]
        elif how == 3:  # random packets, valid framing
            raw = bytearray(page([rng.randbytes(rng.randrange(300)) for _ in
                                  range(rng.randint(1, 20))],
                                 serial=rng.choice([42, rng.getrandbits(32)]),
                                 seq=rng.getrandbits(32), granule=rng.getrandbits(63),
                                 htype=rng.choice([0, 1, 2, 4, 7, rng.randrange(256)])))
        elif how == 4:  # a forged OpusHead (channels, rate, mapping family)
            head = b"OpusHead" + struct.pack(
                "<BBHIhB", rng.choice([1, 0, 255]), rng.choice([1, 2, 0, 8, 255]),
                rng.getrandbits(16), rng.choice([48000, 24000, 0, 2**32 - 1]),
                rng.randint(-32768, 32767), rng.choice([0, 1, 255]))
            raw = bytearray(page([head + rng.randbytes(rng.randrange(8))], serial=42,
                                 seq=0, granule=0, htype=2))
        elif how == 5:  # an Opus bomb: one page, many 80 ms packets
            frame = _split_packets(self.stream[1])
            raw = bytearray(page(frame * rng.randint(10, 120), serial=42, seq=2 + self.cursor,
                                 granule=0))
        elif how == 6:
            raw = bytearray(b"OggS" + rng.randbytes(rng.randrange(600)))
        elif how == 7:  # two pages glued, or a page split across messages
            raw = raw + bytearray(rng.choice(pages))
            raw = raw[:rng.randint(1, len(raw))]
        elif how == 8:
            raw = bytearray(rng.randbytes(rng.randrange(1, 400)))
        else:  # the headers again, mid-stream
            raw = bytearray(self.stream[0])
        return Fuzzed(b"\x01" + bytes(raw), "audio_mutated", "ok", "bad")

    # -- steering and the caller transcript --------------------------------------------

    def _say_text(self) -> Fuzzed:
        rng = self.rng
        how = rng.randrange(6)
        if how == 0:
            return Fuzzed(b"\x02" + rng.randbytes(rng.randrange(1, 64)) + b"\xff",
                          "say_text", "malformed")
        text = rng.choice([
            "Hello there, how can I help?", "", "   ", "\u00e9t\u00e9 \u2603 \U0001f600",
            "x" * rng.randrange(1, 5000), "\x00\x01", "a\u0301" * 50,
        ])
        return Fuzzed(b"\x02" + text.encode(), "say_text", "ok")

    def _say_audio(self) -> Fuzzed:
        rng = self.rng
        pcm = (np.sin(np.arange(rng.randrange(1, 4800)) / 9) * 8000).astype("<i2").tobytes()
        head_obj: object = {"text": "hi", "sample_rate": 24000}
        expect: Expect = "ok"
        how = rng.randrange(8)
        if how == 1:
            head_obj, expect = {"text": 3}, "malformed"
        elif how == 2:
            head_obj, expect = {"text": "x", "sample_rate": rng.choice([8000, 0, "24000"])}, \
                "malformed"
        elif how == 3:
            head_obj, expect = [1, 2], "malformed"
        elif how == 4:
            pcm, expect = pcm + b"\x00" if len(pcm) % 2 == 0 else pcm[:-1], "malformed"
        elif how == 5:
            pcm, expect = b"", "malformed"
        head = json.dumps(head_obj).encode()
        n = len(head)
        if how == 6:
            head, expect = b"{not json", "malformed"
            n = len(head)
        elif how == 7:
            n, expect = rng.choice([len(head) + len(pcm) + 1, 2**32 - 1]), "malformed"
        return Fuzzed(bytes((_SAY_AUDIO,)) + struct.pack("<I", n) + head + pcm,
                      "say_audio", expect)

    def _cancel(self) -> Fuzzed:
        payload, expect = self.rng.choice([
            (b"", "ok"), (b'{"flush": false}', "ok"), (b'{"flush": true}', "ok"), (b"{}", "ok"),
            (b'{"flush": 1}', "malformed"), (b"[]", "malformed"), (b"\xff", "malformed"),
            (b"{", "malformed"),
        ])
        return Fuzzed(bytes((_CANCEL,)) + payload, "cancel", expect)  # type: ignore[arg-type]

    def _flush_caller(self) -> Fuzzed:
        payload = b"" if self.rng.random() < 0.7 else self.rng.randbytes(3)
        expect: Expect = "malformed" if payload and self.flush_caller else "ok"
        return Fuzzed(bytes((_FLUSH_CALLER,)) + payload, "flush_caller", expect)

    # -- Kyutai's own kinds, unknown kinds, garbage ------------------------------------

    def _kyutai_kind(self) -> Fuzzed:
        rng = self.rng
        kind = rng.choice([0, 3, 4, 5, 6, 7, 8, 9])
        ok_payload, bad_payload = {
            0: (rng.choice([b"", bytes(8)]), rng.randbytes(rng.choice([1, 4, 7, 10]))),
            3: (bytes([rng.randrange(4)]), rng.choice([b"", bytes([rng.randint(4, 255)]),
                                                       b"\x00\x00"])),
            4: (json.dumps({"a": [1, 2.5, None], "b": "\u00e9"}).encode(),
                rng.choice([b"{", b"\xff", b"NaNx", b"1" * 5000 + b"e"])),
            5: (b"client says no", b"\xc3\x28"),
            6: (b"", rng.randbytes(rng.randint(1, 8))),
            7: (b"\x05colour", rng.choice([b"", b"\x01\xff\xfe"])),
            8: (rng.randbytes(rng.randrange(100)), None),
            9: (rng.randbytes(rng.randrange(100)), None),
        }[kind]
        if bad_payload is not None and rng.random() < 0.5:
            return Fuzzed(bytes((kind,)) + bad_payload, "kyutai_kind", "malformed")
        return Fuzzed(bytes((kind,)) + ok_payload, "kyutai_kind", "ok")

    def _unknown_kind(self) -> Fuzzed:
        kind = self.rng.choice([k for k in range(256) if k not in _HANDLED])
        return Fuzzed(bytes((kind,)) + self.rng.randbytes(self.rng.randrange(200)),
                      "unknown_kind", "ok")

    def _random(self) -> Fuzzed:
        return Fuzzed(self.rng.randbytes(self.rng.randint(1, 300)), "random", "any")

    def _empty(self) -> Fuzzed:
        return Fuzzed(b"", "empty", "malformed")

    def _text_frame(self) -> Fuzzed:
        # A WebSocket text frame: not Kyutai's protocol; its UTF-8 bytes go to the codec.
        return Fuzzed(self.rng.choice(["\x02hello", "\x01OggS", "{}", "\x06", "é"]),
                      "text_frame", "any")

    def _oversized(self) -> Fuzzed:
        size = self.max_message_bytes + self.rng.randint(1, 64)
        return Fuzzed(self.rng.choice(b"\x01\x02\x41\x08\x77") .to_bytes(1, "big")
                      + bytes(size - 1), "oversized", "malformed")

    def _deep_json(self) -> Fuzzed:
        depth = self.rng.choice([100, 5000, 50000])
        body = b"[" * depth + b"]" * depth
        kind = self.rng.choice([0x04, _CANCEL, _SAY_AUDIO])
        if kind == _SAY_AUDIO:
            body = struct.pack("<I", len(body)) + body + b"\x00\x00"
        if len(body) + 1 > self.max_message_bytes:
            return self._oversized()
        expect: Expect = "ok" if kind == 0x04 and depth <= 100 else "malformed"
        return Fuzzed(bytes((kind,)) + body, "deep_json", expect)


def _split_pages(message: bytes) -> list[bytes]:
    """The raw pages of one message of a valid stream."""
    out, pos = [], 0
    while pos < len(message):
        n = message[pos + 26]
        size = 27 + n + sum(message[pos + 27:pos + 27 + n])
        out.append(message[pos:pos + size])
        pos += size
    return out


def _split_packets(message: bytes) -> list[bytes]:
    return [p for pg in parse_pages(message) for p in pg[4]]
