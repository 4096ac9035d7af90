"""How much audio an Ogg/Opus byte stream holds, read from headers only, before decoding.

A client can send a tiny Ogg page that decodes to seconds of audio (each Opus packet
says in its first byte how long it lasts, up to 120 ms, and a page holds up to 255
packets), so a server that decodes first and counts afterwards has already paid for the
decode. :class:`OggOpusMeter` reads the page headers (RFC 3533) and each packet's TOC
byte (RFC 6716 section 3.1) and returns the duration the decoder would produce, so a
caller can refuse the bytes first. It never decodes and never raises on garbage: bytes
that are not Ogg count as no audio (the decoder then rejects them itself).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_PACKET_SAMPLES_48K", "OggOpusMeter", "opus_packet_samples"]

#: The longest Opus packet: 120 ms at 48 kHz (RFC 6716 section 3.2.5).
MAX_PACKET_SAMPLES_48K: Final = 5760
#: The largest Ogg page: 27-byte header, 255 lacing values of 255 bytes each.
_MAX_PAGE_BYTES: Final = 27 + 255 + 255 * 255
_CAPTURE: Final = b"OggS"
#: Frame sizes at 48 kHz by TOC configuration number (RFC 6716 table 2).
_SILK: Final = (480, 960, 1920, 2880)
_HYBRID: Final = (480, 960)
_CELT: Final = (120, 240, 480, 960)


def opus_packet_samples(packet: bytes | memoryview) -> int:
    """Samples at 48 kHz that ``packet`` decodes to, from its TOC byte (0 for header
    packets; an empty packet is counted as the longest, since a decoder conceals it)."""
    if len(packet) == 0:
        return MAX_PACKET_SAMPLES_48K
    head = bytes(packet[:8])
    if head in (b"OpusHead", b"OpusTags"):
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        frame = _SILK[config & 3]
    elif config < 16:
        frame = _HYBRID[config & 1]
    else:
        frame = _CELT[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return min(frame * count, MAX_PACKET_SAMPLES_48K)


class OggOpusMeter:
    """Feed the bytes of an Ogg/Opus stream, split anywhere; :meth:`feed` returns the
    samples (at ``sample_rate``) of the Opus packets that start in the pages it completes.
    Memory is bounded by one page."""

    def __init__(self, sample_rate: int = 24000) -> None:
        if 48000 % sample_rate:
            raise ValueError(f"sample_rate must divide 48000, got {sample_rate}")
        self._div = 48000 // sample_rate
        self._buf = bytearray()
        self.pages = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        total48 = 0
        while True:
            start = self._buf.find(_CAPTURE)
            if start < 0:
                # Keep a possible partial capture pattern only.
                del self._buf[: max(0, len(self._buf) - 3)]
                break
            if start:
                del self._buf[:start]
            if len(self._buf) < 27:
                break
            nsegs = self._buf[26]
            if len(self._buf) < 27 + nsegs:
                break
            lacing = self._buf[27:27 + nsegs]
            size = 27 + nsegs + sum(lacing)
            if len(self._buf) < size:
                if size > _MAX_PAGE_BYTES:  # cannot happen for a real page: resync
                    del self._buf[:4]
                    continue
                break
            continued = bool(self._buf[5] & 0x01)
            total48 += self._page_samples(memoryview(self._buf)[27 + nsegs:size], lacing,
                                          continued)
            del self._buf[:size]
            self.pages += 1
        return total48 // self._div

    @staticmethod
    def _page_samples(body: memoryview, lacing: bytearray, continued: bool) -> int:
        total = 0
        pos = 0
        starting = not continued  # a continued first packet was counted on its own page
        pkt_start = 0
        pkt_len = 0
        for n in lacing:
            if pkt_len == 0:
                pkt_start = pos
            pkt_len += n
            pos += n
            if n < 255:  # the packet ends here
                if starting:
                    total += opus_packet_samples(body[pkt_start:pkt_start + pkt_len])
                starting = True
                pkt_len = 0
        if pkt_len and starting:  # a packet that goes on in the next page
            total += opus_packet_samples(body[pkt_start:pkt_start + min(pkt_len, 2)])
        return total
