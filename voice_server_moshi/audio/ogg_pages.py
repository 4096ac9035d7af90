"""Ogg pages by hand (RFC 3533): build, parse and re-checksum them, for tests and the
protocol fuzz (``bench fuzz``), which need pages a real encoder never writes (an "Opus
bomb", a corrupted body under a valid checksum, a forged ``OpusHead``)."""

from __future__ import annotations

import struct

__all__ = ["fix_crc", "ogg_crc", "page", "parse_pages"]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, zero init) of ``data``."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) & 0xFF) ^ b]
    return crc


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
