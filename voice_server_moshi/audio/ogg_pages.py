"""Ogg pages by hand (RFC 3533): build, parse and re-checksum them.

The libopus encoder (:mod:`.libopus`) writes its stream with :func:`page`; the tests and
the protocol fuzz (``bench fuzz``) also build pages a real encoder never writes (an "Opus
bomb", a corrupted body under a valid checksum, a forged ``OpusHead``)."""

from __future__ import annotations

import struct
import zlib

__all__ = ["fix_crc", "ogg_crc", "page", "parse_pages"]

#: Each byte with its bits in reverse order.
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, zero init) of ``data``.

    zlib's CRC-32 is the same polynomial run bit-reflected; fed bit-reversed bytes from a
    zero register, it yields Ogg's checksum bit-reversed. This runs in C, where a table
    loop in Python cost about 0.1 ms a page on the encoder's hot path.
    """
    reflected = zlib.crc32(data.translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def fix_crc(raw: bytes) -> bytes:
    """``raw`` (one page, possibly altered) with its checksum field recomputed, so a reader
    gets past the checksum to whatever was altered. Shorter than a header: unchanged."""
    if len(raw) < 27:
        return raw
    zeroed = raw[:22] + b"\0\0\0\0" + raw[26:]
    return raw[:22] + struct.pack("<I", ogg_crc(zeroed)) + raw[26:]


def parse_pages(data: bytes) -> list[tuple[int, int, int, int, list[bytes]]]:
    """(header_type, granule, serial, seq, packets) of each page (packets not spanning)."""
    out = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        htype = data[pos + 5]
        granule, serial, seq = struct.unpack_from("<qII", data, pos + 6)
        n = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + n]
        body = pos + 27 + n
        packets, cur = [], b""
        for lv in lacing:
            cur += data[body:body + lv]
            body += lv
            if lv < 255:
                packets.append(cur)
                cur = b""
        out.append((htype, granule, serial, seq, packets))
        pos = body
    return out


def page(packets: list[bytes], *, serial: int, seq: int, granule: int, htype: int = 0) -> bytes:
    """One page holding ``packets`` (at most 255 lacing values in all)."""
    lacing = b""
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    if len(lacing) > 255:
        raise ValueError(f"{len(lacing)} lacing values do not fit one page (255 at most)")
    head = (b"OggS" + bytes([0, htype]) + struct.pack("<qIII", granule, serial, seq, 0)
            + bytes([len(lacing)]) + lacing)
    return fix_crc(head + b"".join(packets))
