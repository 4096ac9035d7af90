"""Hand-made Ogg pages for hostile-client tests (RFC 3533), e.g. an "Opus bomb": one small
page holding many Opus packets that decode to seconds of audio."""

from __future__ import annotations

import struct

import numpy as np
import sphn


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
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) & 0xFF) ^ b]
    return crc


def parse_pages(data: bytes) -> list[tuple[int, int, int, int, list[bytes]]]:
    """(header_type, granule, serial, seq, packets) of each page (packets not spanning)."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
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
    lacing = b""
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    assert len(lacing) <= 255
    head = (b"OggS" + bytes([0, htype]) + struct.pack("<qIII", granule, serial, seq, 0)
            + bytes([len(lacing)]) + lacing)
    raw = head + b"".join(packets)
    crc = ogg_crc(raw)
    return raw[:22] + struct.pack("<I", crc) + raw[26:]


def opus_bomb(pages: int, packets_per_page: int = 50) -> list[bytes]:
    """The stream headers, then ``pages`` pages of ``packets_per_page`` copies of sphn's
    80 ms of silence each (50 -> 4 s per page of about 5 kB). Each item is one message."""
    w = sphn.OpusStreamWriter(24000)
    first = bytes(w.append_pcm(np.zeros(1920, np.float32)))
    parsed = parse_pages(first)
    serial = parsed[0][2]
    headers = b"".join(page(p[4], serial=serial, seq=p[3], granule=p[1], htype=p[0])
                       for p in parsed[:2])
    frame = [p for pg in parsed[2:] for p in pg[4]]  # the packets of one 80 ms frame
    out = [headers]
    granule = 0
    for i in range(pages):
        granule += packets_per_page * 3840
        out.append(page(frame * packets_per_page, serial=serial, seq=2 + i, granule=granule))
    return out
